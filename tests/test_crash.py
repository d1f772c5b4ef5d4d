"""Countersign served by gunicorn under concurrent learners, with workers killed mid-request.

Fifty volunteers have read every module and passed all but two quizzes. Half of them then take the
last two quizzes and sign at the same time, every form sent twice (two tabs at once, or a second
click after the first answer); the other half do the same while workers are SIGKILLed, retrying each
request whose connection dropped. The database must then hold exactly what the server said it did:
nothing lost, nothing twice, nothing half-written.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import create_engine, event, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool
from werkzeug.security import generate_password_hash

from app import create_app
from core.db import db, normalise_url, utcnow
from people.models import Person, PersonRole
from quizzes.attempts import draw, grade, rules_of
from quizzes.models import QuizAttempt, QuizBank, QuizSubmission
from quizzes.versions import drawn_of, store_drawn
from tests.conftest import PASSWORD
from tests.load_server import Browser, Killer, Server, Tally
from training.models import Policy, ReadReceipt
from training.publishing import current_version
from training.status import QUIZ_NOT_PASSED, training_status

BASE = "/policies/social-media-policy"
VOLUNTEER_MODULES = [
    "scope", "organisational-control", "creating-accounts", "monitoring", "behaviour",
    "legal-considerations", "handling-abuse", "tone", "use-of-images", "federation-accounts",
]  # fmt: skip
LEFT = ["use-of-images", "federation-accounts"]  # read, quiz not yet taken
PEOPLE = 50
KILLS = 20
CONCURRENT_LEARNERS = 12
KILL_EVERY = 12  # requests; a learner makes about 13
PHASE_SECONDS = 150  # at most, for each phase's learners (the kills cost worker boots)


def test_creating_the_app_opens_no_database_connection(database_url: str) -> None:
    """gunicorn forks its workers after importing the app: a connection opened by ``create_app``
    would be shared by every worker. Nothing may connect until a request needs the database."""
    connects: list[object] = []

    def count(dbapi_connection: Any, _record: Any) -> None:
        connects.append(dbapi_connection)

    event.listen(Pool, "connect", count)
    try:
        app = create_app({"DATABASE_URL": database_url, "TESTING": True, "SECRET_KEY": "k"})
        assert connects == []
        with app.app_context():
            db.session.execute(text("SELECT 1"))  # the counter does see a real connection
            db.session.close()
            assert len(connects) == 1
            db.engine.dispose()
    finally:
        event.remove(Pool, "connect", count)


# --- the learners ------------------------------------------------------------------------------


@dataclass
class Form:
    """One form a learner filled in, and what came back each time it was sent."""

    person_id: int
    kind: str  # "start", "submit" or "sign"
    module: str | None
    path: str
    data: dict[str, Any]
    statuses: list[int] = field(default_factory=list)
    locations: list[str] = field(default_factory=list)
    retries: int = 0  # sends whose connection dropped and were sent again
    resent: int = 0  # sent again after both first answers, while workers were being killed

    @property
    def succeeded(self) -> bool:
        return bool(self.statuses) and all(300 <= s < 400 for s in self.statuses)


@dataclass
class Learner:
    person_id: int
    email: str
    name: str


class Load:
    """Learners taking their last quizzes and signing, each through the pages as a browser would."""

    def __init__(self, base: str, engine: Engine) -> None:
        self.base, self.engine = base, engine
        self.tally = Tally()
        self.forms: list[Form] = []
        self.browsers: dict[int, Browser] = {}
        self._lock = threading.Lock()

    def run(self, learners: list[Learner], until: threading.Event | None = None) -> None:
        """Every learner's journey; then, while ``until`` is not set, the forms sent again.

        Sending a form again after its record exists must change nothing, killed worker or not;
        it also keeps the load going for as long as the workers are being killed.
        """
        pool = ThreadPoolExecutor(CONCURRENT_LEARNERS)
        deadline = time.monotonic() + PHASE_SECONDS
        try:
            for done in [pool.submit(self.learn, n, learner) for n, learner in enumerate(learners)]:
                done.result(timeout=max(1, deadline - time.monotonic()))
            while until is not None and not until.is_set() and time.monotonic() < deadline:
                for done in [pool.submit(self.send_again, form) for form in self.forms]:
                    done.result(timeout=max(1, deadline - time.monotonic()))
        except BaseException:
            self.tally.stop.set()  # the other learners stop at their next request
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            for browser in self.browsers.values():
                browser.close()

    def learn(self, n: int, learner: Learner) -> None:
        browser = self.browsers[learner.person_id] = Browser(self.base, self.tally)
        token = browser.csrf("/sign-in")
        signed_in = browser.post(
            "/sign-in", {"email": learner.email, "password": PASSWORD, "csrf_token": token}
        )
        assert signed_in.status_code == 302, signed_in.text
        # Signing in starts a fresh session; its token serves every form the session shows.
        token = browser.csrf(f"{BASE}/modules/{LEFT[0]}/quiz")
        for i, slug in enumerate(LEFT):
            self.take_quiz(browser, learner, slug, token, parallel=(n + i) % 2 == 0)
        data = {"csrf_token": token, "confirm": "y", "full_name": learner.name}
        self.send_twice(browser, Form(learner.person_id, "sign", None, f"{BASE}/sign", data),
                        parallel=n % 2 == 1)  # fmt: skip

    def send_again(self, form: Form) -> None:
        if form.kind == "start":
            return  # a new attempt after a pass is allowed: not a double submit
        browser = self.browsers[form.person_id]
        before = browser.retries
        response = browser.post(form.path, form.data)
        form.resent += 1
        form.retries += browser.retries - before
        assert response.status_code in (302, 303), f"{form.path} again: {response.status_code}"
        assert response.headers["Location"] == form.locations[0], form.path

    def take_quiz(
        self, browser: Browser, learner: Learner, slug: str, token: str, parallel: bool
    ) -> None:
        intro = f"{BASE}/modules/{slug}/quiz"
        start = Form(learner.person_id, "start", slug, intro, {"csrf_token": token})
        self.send_twice(browser, start, parallel)
        attempt_path = start.locations[-1]
        public_id = attempt_path.rsplit("/", 1)[1]
        answers = self.right_answers(public_id)
        data = {f"q-{key}": ids for key, ids in answers.items()}
        data["csrf_token"] = token
        submit = Form(learner.person_id, "submit", slug, attempt_path, data)
        self.send_twice(browser, submit, not parallel)

    def right_answers(self, public_id: str) -> dict[str, list[str]]:
        """What a learner who knows the policy would tick (the page itself never says)."""
        with self.engine.connect() as conn:
            refs = conn.scalar(
                text("SELECT question_refs FROM quiz_attempt WHERE public_id = :p"),
                {"p": public_id},
            )
            assert refs is not None, f"the attempt {public_id} the server sent us to does not exist"
            (drawn,) = drawn_of(conn, [_json(refs)])
        return {q["key"]: [o["id"] for o in q["options"] if o["correct"]] for q in drawn}

    def send_twice(self, browser: Browser, form: Form, parallel: bool) -> None:
        """A double submit: two tabs at once, or the same form sent again after the answer."""
        with self._lock:
            self.forms.append(form)
        tabs = [browser, browser.tab()] if parallel else [browser, browser]
        before = sum(t.retries for t in set(tabs))
        if parallel:
            barrier = threading.Barrier(2, timeout=30)
            results: list[Any] = [None, None]

            def send(i: int) -> None:
                try:
                    barrier.wait()
                    results[i] = tabs[i].post(form.path, form.data)
                except BaseException as exc:  # raised below, in the learner's own thread
                    results[i] = exc

            threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            tabs[1].close()
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            assert all(r is not None for r in results), f"{form.path}: a tab got no answer"
            responses = results
        else:
            responses = [browser.post(form.path, form.data), browser.post(form.path, form.data)]
        form.retries = sum(t.retries for t in set(tabs)) - before
        form.statuses = [r.status_code for r in responses]
        form.locations = [r.headers.get("Location", "") for r in responses]
        assert form.succeeded, f"{form.kind} {form.path}: {form.statuses}"


def _json(value: Any) -> Any:
    """A JSON column's value: PostgreSQL hands it decoded, SQLite as text."""
    return json.loads(value) if isinstance(value, str) else value


# --- preparing and checking the database ----------------------------------------------------------


def prepare_people(app: Flask) -> list[Learner]:
    """Volunteers who have read every module and passed every quiz but those in LEFT.

    The evidence is written as rows, as the app writes them (questions drawn from the bank,
    answers graded by the app's own grading): going through the rules person by person would
    take most of the time the test has.
    """
    # scrypt is slow by design: the first half (who sign in under load without kills) have a hash
    # at the production cost, the others a cheaper one, so that the time goes to the kills.
    hashes = [generate_password_hash(PASSWORD), generate_password_hash(PASSWORD, "scrypt:2048:8:1")]
    earlier = utcnow() - timedelta(hours=1)
    with app.app_context():
        s = db.session
        policy = s.scalar(select(Policy))
        links = {
            link.module_version.module.slug: link
            for link in current_version(s, policy).module_links
        }
        banks = {slug: s.get(QuizBank, links[slug].bank_id) for slug in VOLUNTEER_MODULES}
        people = []
        for n in range(PEOPLE):
            person = Person(name=f"Learner {n:02d}", email=f"learner{n}@ladysmith.example",
                            password_hash=hashes[n >= PEOPLE // 2])  # fmt: skip
            person.role_rows = [PersonRole(role="volunteer")]
            people.append(person)
        s.add_all(people)
        s.flush()
        for person in people:
            for slug in VOLUNTEER_MODULES:
                mv_id = links[slug].module_version_id
                s.add(ReadReceipt(person_id=person.id, module_version_id=mv_id, at=earlier))
                if slug in LEFT:
                    continue
                bank, rules = banks[slug], rules_of(banks[slug])
                drawn = draw(bank.questions, rules.draw, rules.shuffle)
                answers = {q["key"]: [o["id"] for o in q["options"] if o["correct"]] for q in drawn}
                result = grade(drawn, answers, rules.pass_mark)
                attempt = QuizAttempt(
                    public_id=secrets.token_urlsafe(16), person_id=person.id,
                    module_version_id=mv_id, bank_id=bank.id, started_at=earlier,
                    expires_at=earlier + timedelta(minutes=rules.time_limit_minutes),
                    pass_mark=rules.pass_mark, show_answers=rules.show_answers,
                    question_refs=store_drawn(s, drawn),
                )  # fmt: skip
                attempt.submission = QuizSubmission(
                    submitted_at=earlier, answers=answers, correct=result.correct,
                    total=result.total, score=result.score, passed=result.passed,
                )  # fmt: skip
                s.add(attempt)
        s.commit()
        status = training_status(s, people[-1], policy)
        assert not status.ready_to_sign
        assert sorted(m.slug for m in status.modules if not m.complete) == sorted(LEFT)
        assert {m.reason for m in status.modules if not m.complete} == {QUIZ_NOT_PASSED}
        learners = [Learner(p.id, p.email, p.name) for p in people]
        s.close()
        db.engine.dispose()  # the server's workers must be the only ones connected
    return learners


def connections_held(server: Server, database_url: str, engine: Engine) -> int:
    """Database connections held by the server: open files on the SQLite database (and its WAL),
    or sessions on the PostgreSQL database other than the one asking."""
    if database_url.startswith("sqlite"):
        path = os.path.realpath(database_url.removeprefix("sqlite:///"))
        held = 0
        for pid in [server.pid, *server.worker_pids()]:
            for fd in Path(f"/proc/{pid}/fd").glob("*"):
                try:
                    held += os.readlink(fd).startswith(path)
                except OSError:
                    pass
        return held
    with engine.connect() as conn:
        return conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )


def rows(engine: Engine, sql: str, **params: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(sql), params))


def check_database(engine: Engine, learners: list[Learner], forms: list[Form]) -> dict[str, int]:
    """The invariants of the evidence, in SQL, after the load."""
    people = {learner.person_id: learner for learner in learners}
    ids = sorted(people)
    in_people = f"({', '.join(str(i) for i in ids)})"

    # Quiz attempts: one per person and module (a double start resumes, never redraws), each
    # graded exactly once, and every grade complete and right for the answers it holds.
    dupes = rows(
        engine,
        f"""SELECT person_id, module_version_id, count(*) FROM quiz_attempt
        WHERE person_id IN {in_people} GROUP BY person_id, module_version_id HAVING count(*) > 1""",
    )
    assert dupes == [], f"attempts started twice: {dupes}"
    graded = rows(
        engine,
        f"""SELECT a.public_id, a.person_id, a.question_refs, a.pass_mark, s.answers,
            s.correct, s.total, s.score, s.passed
        FROM quiz_attempt a LEFT JOIN quiz_submission s ON s.attempt_id = a.id
        WHERE a.person_id IN {in_people}""",
    )
    assert len(graded) == PEOPLE * len(VOLUNTEER_MODULES)
    with engine.connect() as conn:
        asked = drawn_of(conn, [_json(row[2]) for row in graded])
    for row, drawn in zip(graded, asked, strict=True):
        public_id, _pid, _refs, pass_mark, answers, correct, total, score, passed = row
        assert answers is not None, f"attempt {public_id} was never graded"
        answers = _json(answers)
        assert set(answers) == {q["key"] for q in drawn}, f"attempt {public_id}: partial answers"
        expected = grade(drawn, answers, pass_mark)
        assert (correct, total, score, bool(passed)) == (
            expected.correct, expected.total, expected.score, expected.passed,
        ), f"attempt {public_id} graded wrongly"  # fmt: skip
        assert expected.passed
    assert (
        rows(
            engine,
            """SELECT attempt_id, count(*) FROM quiz_submission
        GROUP BY attempt_id HAVING count(*) > 1""",
        )
        == []
    )
    assert (
        rows(
            engine,
            """SELECT s.id FROM quiz_submission s
        LEFT JOIN quiz_attempt a ON a.id = s.attempt_id WHERE a.id IS NULL""",
        )
        == []
    )

    # Acknowledgements: exactly one per person and policy version, each complete, covering the
    # module versions the person was required to complete.
    acks = rows(
        engine,
        f"""SELECT a.id, a.person_id, a.seq, a.typed_name, a.declaration, a.ip,
            a.user_agent, (SELECT count(*) FROM acknowledgement_module m
                           WHERE m.acknowledgement_id = a.id)
        FROM acknowledgement a WHERE a.person_id IN {in_people}""",
    )
    assert sorted(a[1] for a in acks) == ids, "an acknowledgement is missing or recorded twice"
    for ack_id, pid, seq, typed_name, declaration, ip, user_agent, modules in acks:
        assert seq == 0
        assert typed_name == people[pid].name, f"acknowledgement {ack_id}: {typed_name!r}"
        assert "(version 1.0)" in declaration and ip == "127.0.0.1" and user_agent
        assert modules == len(VOLUNTEER_MODULES), f"acknowledgement {ack_id} covers {modules}"
    assert (
        rows(
            engine,
            """SELECT m.acknowledgement_id FROM acknowledgement_module m
        LEFT JOIN acknowledgement a ON a.id = m.acknowledgement_id WHERE a.id IS NULL""",
        )
        == []
    )
    # Certificates follow signing; one killed before issuing is issued later by the CLI, but none
    # may exist twice, or without its acknowledgement, or with half its document.
    certificates = rows(
        engine,
        """SELECT c.id, c.acknowledgement_id, a.id, c.pdf IS NULL,
        c.pdf_sha256 IS NULL FROM certificate c LEFT JOIN acknowledgement a
        ON a.id = c.acknowledgement_id""",
    )
    for cert_id, _ack_id, found, no_pdf, no_hash in certificates:
        assert found is not None, f"certificate {cert_id} without its acknowledgement"
        assert no_pdf == no_hash, f"certificate {cert_id}: PDF and its hash disagree"
    assert len({c[1] for c in certificates}) == len(certificates)

    # Reading was done before the load; nothing the load did may have added to it.
    assert rows(
        engine,
        f"""SELECT count(*), count(DISTINCT person_id * 100000 + module_version_id)
        FROM read_receipt WHERE person_id IN {in_people}""",
    ) == [(PEOPLE * len(VOLUNTEER_MODULES), PEOPLE * len(VOLUNTEER_MODULES))]

    # Every form the server answered with success is in the database, once.
    attempts = {r[0]: r for r in graded}
    ack_people = {a[1] for a in acks}
    for form in forms:
        assert form.succeeded
        if form.kind == "start":
            for location in form.locations:
                public_id = location.rsplit("/", 1)[1]
                assert public_id in attempts and attempts[public_id][1] == form.person_id
        elif form.kind == "submit":
            public_id = form.path.rsplit("/", 1)[1]
            assert attempts[public_id][4] is not None
        else:
            assert form.person_id in ack_people
    return {"certificates": len(certificates)}


# --- the test ---------------------------------------------------------------------------------------


@pytest.fixture
def served(
    app: Flask, published: None, database_url: str, content_dir: Path, tmp_path: Path
) -> Iterator[Callable[[], tuple[Server, Engine]]]:
    """Starts gunicorn on the prepared database when asked; always stops it."""
    servers: list[Server] = []
    engines: list[Engine] = []

    def start() -> tuple[Server, Engine]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("COUNTERSIGN_")}
        env.pop("DATABASE_URL", None)
        env.update(
            COUNTERSIGN_DATABASE_URL=database_url,
            COUNTERSIGN_CONTENT_DIR=str(content_dir),
            COUNTERSIGN_SECRET_KEY="crash-test-secret-key",
            COUNTERSIGN_BASE_URL="http://127.0.0.1",
            PYTHONUNBUFFERED="1",
        )
        server = Server(env, tmp_path / "gunicorn.log")
        servers.append(server)
        server.start()
        engine = create_engine(normalise_url(database_url))
        engines.append(engine)
        return server, engine

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
        for engine in engines:
            engine.dispose()


def test_concurrent_double_submits_and_killed_workers_lose_and_duplicate_nothing(
    app: Flask, served: Callable[[], tuple[Server, Engine]], database_url: str
) -> None:
    started = time.monotonic()
    server, engine = served()  # its workers boot while the database is prepared
    learners = prepare_people(app)
    calm, stormy = learners[: PEOPLE // 2], learners[PEOPLE // 2 :]
    prepared = time.monotonic()
    server.wait_for_workers(timeout=60)
    # The workers are up and one has answered a request that needs no database: no connection yet.
    assert server.worker_pids() and connections_held(server, database_url, engine) == 0
    booted = time.monotonic()

    # Concurrent learners, every form sent twice: no error, no dropped connection.
    load = Load(server.url, engine)
    load.run(calm)
    assert load.tally.server_errors == []
    assert sum(load.tally.dropped.values()) == 0
    assert set(load.tally.statuses) <= {200, 302, 303}, load.tally.statuses
    calm_done = time.monotonic()

    # The same again while workers are killed mid-request; gunicorn replaces them.
    storm = Load(server.url, engine)
    killer = Killer(server, storm.tally, KILLS, every=KILL_EVERY, booting=2)
    killer.start()
    try:
        storm.run(stormy, until=killer.done)
    finally:
        killer.stop_event.set()
        killer.join(timeout=10)
    server.wait_for_workers(timeout=30)
    storm_done = time.monotonic()

    assert storm.tally.server_errors == [], storm.tally.server_errors
    assert set(storm.tally.statuses) <= {200, 302, 303}, storm.tally.statuses
    assert len(killer.killed) == KILLS, f"only {len(killer.killed)} kills during the load"
    assert server.process is not None and server.process.poll() is None
    assert server.log_text().count("Booting worker") >= 4 + KILLS  # each one replaced
    retried = [f for f in storm.forms if f.retries]
    assert retried, "no kill interrupted a form: nothing was retried"

    found = check_database(engine, learners, load.forms + storm.forms)
    print(
        f"\n[{database_url.split(':')[0]}] prepare {prepared - started:.1f}s, "
        f"boot {booted - prepared:.1f}s, calm {calm_done - booted:.1f}s, "
        f"storm {storm_done - calm_done:.1f}s, total {time.monotonic() - started:.1f}s\n"
        f"calm: {load.tally.requests} requests {dict(load.tally.statuses)}, "
        f"{len(load.forms)} forms\n"
        f"storm: {storm.tally.requests} requests {dict(storm.tally.statuses)}, "
        f"dropped {dict(storm.tally.dropped)}, {len(storm.forms)} forms, "
        f"{len(retried)} forms retried after a drop ({sum(f.retries for f in retried)} retries), "
        f"{sum(f.resent for f in storm.forms)} forms sent again after success, "
        f"kills {len(killer.killed)}; certificates {found['certificates']}"
    )
