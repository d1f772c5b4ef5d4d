"""Benchmark: publishing a new version of the policy with 10,000 people trained on the one before.

Builds 10,000 members of staff (``BENCH_PEOPLE``), every one trained on version 1.0: each module
read, its quiz passed (questions drawn from the bank and graded as the app grades them), the
policy signed; their answers stored, and the announcements of that marked as delivered long ago.
Then changes one module's text and the version label, as an author does, and publishes the way
``flask content publish`` does (the same function, ``training.cli.publish_all``, in process):
that call, commit included, is what the administrator waits for (target < 1 s). Then runs
``flask worker --once`` beside it and measures how long until every stored answer is up to date
(target < 30 s), and until the worker has nothing left to do (everyone's ``status.changed``
delivered to its subscribers). SQLite in a temporary folder, then PostgreSQL as in
``bench/inset.py`` (skipped with a note when none is reachable). Talks to nothing else; stops by
itself.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.inset import drop_pg_database, fresh_pg_database, server_env  # noqa: E402

PEOPLE = int(os.environ.get("BENCH_PEOPLE", "10000"))
POLICY = "social-media-policy"
WORKER_TIMEOUT = 600  # seconds: the worker's pass is stopped after this


def build(url: str, count: int) -> float:
    """A database of ``count`` staff trained on the published version; returns seconds taken."""
    from sqlalchemy import func, insert, select, update

    from app import create_app
    from core.db import db, utcnow
    from core.migrate import upgrade
    from core.outbox import OutboxMessage
    from people.models import Person, PersonRole
    from quizzes.attempts import draw, grade, rules_of
    from quizzes.models import QuizAttempt, QuizBank, QuizSubmission
    from quizzes.versions import store_drawn
    from training.cli import publish_all
    from training.models import (
        Acknowledgement,
        AcknowledgementModule,
        Policy,
        ReadReceipt,
        StoredStatus,
    )
    from training.publishing import current_version
    from training.status_store import bring_up_to_date

    started = time.perf_counter()
    app = create_app({"DATABASE_URL": url, "SECRET_KEY": "bench"})
    with app.app_context():
        upgrade()
        publish_all()
        s = db.session
        now = utcnow()
        read_at, signed_at = now - timedelta(days=3), now - timedelta(days=2)
        s.execute(
            insert(Person),
            [{"email": f"p{n}@publish.example", "name": f"Person {n}", "active": True,
              "auth_version": 1, "created_at": now - timedelta(days=30)} for n in range(count)],
        )  # fmt: skip
        ids = list(s.scalars(select(Person.id).order_by(Person.id)))
        s.execute(insert(PersonRole), [{"person_id": i, "role": "staff"} for i in ids])
        version = current_version(s, s.scalar(select(Policy).where(Policy.slug == POLICY)))
        # One drawing per module, graded by the app's grading, shared by everyone's attempt.
        quizzes = []
        for link in version.module_links:
            if link.bank_id is None:
                continue
            bank = s.get(QuizBank, link.bank_id)
            rules = rules_of(bank)
            drawn = draw(bank.questions, rules.draw, rules.shuffle)
            answers = {q["key"]: [o["id"] for o in q["options"] if o["correct"]] for q in drawn}
            result = grade(drawn, answers, rules.pass_mark)
            assert result.passed
            quizzes.append((link, bank, rules, store_drawn(s, drawn), answers, result))
        mvs = [mv.id for mv in version.module_versions]
        chunk = 20_000
        receipts = [{"person_id": i, "module_version_id": mv, "seq": 0, "at": read_at}
                    for i in ids for mv in mvs]  # fmt: skip
        for start in range(0, len(receipts), chunk):
            s.execute(insert(ReadReceipt), receipts[start : start + chunk])
        next_id = (s.scalar(select(func.max(QuizAttempt.id))) or 0) + 1
        attempts, submissions = [], []
        for i in ids:
            for link, bank, rules, refs, answers, result in quizzes:
                attempts.append(
                    {"id": next_id, "public_id": secrets.token_urlsafe(16), "person_id": i,
                     "module_version_id": link.module_version_id, "bank_id": bank.id,
                     "started_at": read_at, "pass_mark": rules.pass_mark,
                     "expires_at": read_at + timedelta(minutes=rules.time_limit_minutes),
                     "show_answers": rules.show_answers, "question_refs": refs}
                )  # fmt: skip
                submissions.append(
                    {"attempt_id": next_id, "submitted_at": read_at, "answers": answers,
                     "correct": result.correct, "total": result.total, "score": result.score,
                     "passed": True}
                )  # fmt: skip
                next_id += 1
        for start in range(0, len(attempts), chunk):
            s.execute(insert(QuizAttempt), attempts[start : start + chunk])
            s.execute(insert(QuizSubmission), submissions[start : start + chunk])
        first = (s.scalar(select(func.max(Acknowledgement.id))) or 0) + 1
        s.execute(
            insert(Acknowledgement),
            [{"id": first + n, "person_id": i, "policy_version_id": version.id, "seq": 0,
              "declaration": "d", "typed_name": f"Person {n}", "at": signed_at,
              "ip": "127.0.0.1", "user_agent": "bench"} for n, i in enumerate(ids)],
        )  # fmt: skip
        links = [{"acknowledgement_id": first + n, "module_version_id": mv}
                 for n in range(len(ids)) for mv in mvs]  # fmt: skip
        for start in range(0, len(links), chunk):
            s.execute(insert(AcknowledgementModule), links[start : start + chunk])
        s.commit()
        bring_up_to_date(s)
        # Their becoming trained is history: its announcements count as delivered long ago.
        s.execute(update(OutboxMessage).where(OutboxMessage.done_at.is_(None)).values(done_at=now))
        s.commit()
        trained = s.scalar(
            select(func.count()).where(
                StoredStatus.trained.is_(True), StoredStatus.version == "1.0"
            )
        )
        assert trained == count, f"only {trained} of {count} trained on 1.0"
        s.close()
        db.engine.dispose()
    return time.perf_counter() - started


def changed_content(workdir: Path) -> Path:
    """A copy of the content with one module worded differently and a new version label."""
    content = workdir / "content"
    shutil.rmtree(content, ignore_errors=True)
    shutil.copytree(ROOT / "content", content)
    folder = content / POLICY
    for name, old, new in (("08-tone.md", "- Engaging", "- Engaging and clear"),
                           ("policy.yaml", 'version: "1.0"', 'version: "1.1"')):  # fmt: skip
        path = folder / name
        text = path.read_text()
        assert old in text, f"{name} no longer says {old!r}"
        path.write_text(text.replace(old, new, 1))
    return content


def publish_and_catch_up(url: str, workdir: Path, count: int) -> dict[str, float | int]:
    from sqlalchemy import func, select

    from app import create_app
    from core.db import db, reads_only, utcnow
    from core.outbox import OutboxMessage
    from training.cli import publish_all
    from training.models import Policy, StoredStatus
    from training.status_store import out_of_date

    content = changed_content(workdir)
    app = create_app({"DATABASE_URL": url, "SECRET_KEY": "bench", "CONTENT_DIR": str(content)})
    figures: dict[str, float | int] = {}
    with app.app_context():
        s = db.session
        s.execute(select(1))  # connected before the clock starts, as a serving process is
        s.rollback()
        started = time.perf_counter()
        lines = publish_all()  # what `flask content publish` runs; commits, and after it the
        figures["publish_s"] = time.perf_counter() - started  # step that hands everyone over
        assert any("1.1" in line for line in lines), lines
        policy = s.scalar(select(Policy).where(Policy.slug == POLICY))
        s.rollback()
        reads_only()  # watching must not take SQLite's write lock from the worker
        env = server_env(url, 5000)
        env["COUNTERSIGN_CONTENT_DIR"] = str(content)
        log = open(workdir / "worker.log", "wb")  # noqa: SIM115 - closed below
        started = time.perf_counter()
        worker = subprocess.Popen(
            [str(ROOT / ".venv/bin/flask"), "worker", "--once"], cwd=ROOT, env=env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            while "answers_s" not in figures:
                policy = s.get_one(Policy, policy.id, populate_existing=True)
                if not out_of_date(s, policy, now=utcnow(), limit=1):
                    figures["answers_s"] = time.perf_counter() - started
                s.rollback()
                if worker.poll() is not None or time.perf_counter() - started > WORKER_TIMEOUT:
                    break
                time.sleep(0.2)
            worker.wait(timeout=max(1, WORKER_TIMEOUT - (time.perf_counter() - started)))
            figures["drained_s"] = time.perf_counter() - started
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, 15)
                worker.wait(timeout=20)
            log.close()
        policy = s.get_one(Policy, policy.id, populate_existing=True)
        figures["out_of_date"] = len(out_of_date(s, policy, now=utcnow()))
        figures["on_new_version"] = s.scalar(
            select(func.count()).where(
                StoredStatus.version == "1.1", StoredStatus.trained.is_(False)
            )
        )
        figures["announced"] = s.scalar(
            select(func.count()).where(
                OutboxMessage.topic == "status.changed", OutboxMessage.done_at.is_not(None),
                OutboxMessage.payload["new"]["version"].as_string() == "1.1",
            )
        )  # fmt: skip
        unfinished = OutboxMessage.done_at.is_(None) & OutboxMessage.gave_up_at.is_(None)
        figures["left"] = s.scalar(select(func.count()).where(unfinished))
        figures["worker_exit"] = worker.returncode
        s.rollback()
        db.engine.dispose()
    return figures


def run(name: str, url: str, workdir: Path) -> bool:
    built = build(url, PEOPLE)
    f = publish_and_catch_up(url, workdir, PEOPLE)
    answers = f.get("answers_s")
    print(f"\n{name}: {PEOPLE:,} staff trained on 1.0 (built in {built:.0f} s); one module's "
          f"text changed, published as 1.1; load average {os.getloadavg()[0]:.1f} "
          f"({os.cpu_count()} cores)")  # fmt: skip
    print("| measurement | result | target |")
    print("| --- | --- | --- |")
    print(
        f"| publishing (`publish_all`, commit included) | {f['publish_s'] * 1000:.0f} ms | < 1 s |"
    )
    print(f"| `flask worker --once`: every stored answer up to date | "
          f"{f'{answers:.1f} s' if answers is not None else 'not reached'} | < 30 s |")  # fmt: skip
    print(f"| `flask worker --once`: everyone's change delivered, nothing left | "
          f"{f['drained_s']:.1f} s (exit {f['worker_exit']}) | — |")  # fmt: skip
    print(f"stored answers out of date afterwards {f['out_of_date']}; on 1.1 and not trained "
          f"{f['on_new_version']}/{PEOPLE}; status.changed 1.0 → 1.1 delivered "
          f"{f['announced']}/{PEOPLE}; outbox messages left {f['left']}")  # fmt: skip
    return (
        f["publish_s"] < 1 and answers is not None and answers < 30 and f["out_of_date"] == 0
        and f["on_new_version"] == f["announced"] == PEOPLE and f["left"] == 0
    )  # fmt: skip


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="countersign-bench-publish-"))
    verdicts = []
    try:
        verdicts.append(run("SQLite", f"sqlite:///{workdir / 'countersign.db'}", workdir))
        pg = fresh_pg_database("cs_bench_publish")
        if pg:
            try:
                verdicts.append(run("PostgreSQL", pg, workdir))
            finally:
                drop_pg_database(pg)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("\ntargets (publishing < 1 s, every answer up to date < 30 s, everyone announced): "
          + ("met" if all(verdicts) else "NOT met"))  # fmt: skip


if __name__ == "__main__":
    main()
