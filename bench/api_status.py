"""Benchmark: training-status lookups under gunicorn against a bare Flask endpoint.

Builds a database of 10,000 people with a spread of progress and stores everyone's answer (as the
app does after each change), starts gunicorn (2 sync workers) on 127.0.0.1 for the app and for a
bare Flask JSON endpoint, loads each with wrk (8 connections, a bounded duration; the app is asked
about a different random person on every request), and times 1,000-person checks in process, both
from stored answers and computed afresh. Prints a table for the README. Talks only to 127.0.0.1
and stops by itself.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PEOPLE = int(os.environ.get("BENCH_PEOPLE", "10000"))
DURATION = os.environ.get("BENCH_DURATION", "5s")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CONNECTIONS = 8
# Both served alike, as the API's targets were set: 2 sync workers. BENCH_THREADS=16 serves as
# `make run` does (2 workers of 16 threads), to compare.
WORKERS = os.environ.get("BENCH_WORKERS", "2")
THREADS = os.environ.get("BENCH_THREADS", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_database(url: str, people_count: int | None = None) -> tuple[str, list[int]]:
    """A migrated database of people with roles, schools and a spread of progress; a token."""
    from sqlalchemy import func, insert, select

    from api.tokens import create_token
    from app import create_app
    from core.db import db, utcnow
    from core.migrate import upgrade
    from people.models import Person, PersonRole, PersonSchool
    from people.roles import ROLES
    from training.cli import publish_all
    from training.models import Acknowledgement, AcknowledgementModule, Policy, ReadReceipt
    from training.publishing import current_version

    count = people_count or PEOPLE
    app = create_app({"DATABASE_URL": url, "SECRET_KEY": "bench"})
    with app.app_context():
        upgrade()
        publish_all()
        s = db.session
        now = utcnow()
        rng = random.Random(1)
        people = [{"email": f"p{n}@bench.example", "name": f"Person {n}", "active": n % 50 != 0,
                   "auth_version": 1, "created_at": now} for n in range(count)]  # fmt: skip
        s.execute(insert(Person), people)
        ids = list(s.scalars(select(Person.id).order_by(Person.id)))
        s.execute(
            insert(PersonRole), [{"person_id": i, "role": rng.choice(list(ROLES))} for i in ids]
        )
        schools = ["infant", "junior", None]
        s.execute(
            insert(PersonSchool),
            [{"person_id": i, "school": school} for i in ids
             if (school := rng.choice(schools)) is not None],
        )  # fmt: skip
        version = current_version(s, s.scalar(select(Policy)))
        mvs = [mv.id for mv in version.module_versions]
        receipts, acks = [], []
        for i in ids:
            done = rng.choice([0, 3, len(mvs), len(mvs)])
            receipts += [{"person_id": i, "module_version_id": mv, "seq": 0, "at": now - timedelta(days=3)}
                         for mv in mvs[:done]]  # fmt: skip
            if done == len(mvs) and rng.random() < 0.7:
                acks.append(i)
        for start in range(0, len(receipts), 50_000):
            s.execute(insert(ReadReceipt), receipts[start : start + 50_000])
        first = (s.scalar(select(func.max(Acknowledgement.id))) or 0) + 1
        s.execute(
            insert(Acknowledgement),
            [{"id": first + n, "person_id": i, "policy_version_id": version.id, "seq": 0,
              "declaration": "d", "typed_name": "x", "at": now - timedelta(days=2),
              "ip": "127.0.0.1", "user_agent": "bench"} for n, i in enumerate(acks)],
        )  # fmt: skip
        links = [{"acknowledgement_id": first + n, "module_version_id": mv}
                 for n in range(len(acks)) for mv in mvs]  # fmt: skip
        for start in range(0, len(links), 50_000):
            s.execute(insert(AcknowledgementModule), links[start : start + 50_000])
        token = create_token(s, "bench", ["training:read"]).secret
        s.commit()
        db.engine.dispose()
    return token, ids


def serve(module: str, port: int, env: dict[str, str]) -> subprocess.Popen:
    process = subprocess.Popen(
        [str(ROOT / ".venv/bin/gunicorn"), "--workers", WORKERS, "--threads", THREADS,
         "--bind", f"127.0.0.1:{port}",
         "--log-level", "warning", module],
        cwd=ROOT, env=env, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.1)
    raise RuntimeError(f"{module} did not start")


# A different person on every request, so nothing is answered from a warm row by luck. The bare
# endpoint is loaded by the same script (its path with a number in it, the same header), so that
# wrk, on the same cores, spends the same on each request of both.
RANDOM_PATH = """
local first, last = %d, %d
request = function()
  local path = "%s" .. math.random(first, last) .. "%s"
  return wrk.format("GET", path)
end
"""


def wrk(
    url: str, header: str | None = None, script: str | None = None, duration: str = DURATION
) -> tuple[float, float]:
    args = ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{duration}", "--latency", url]
    if header:
        args[1:1] = ["-H", header]
    if script:
        args[1:1] = ["-s", script]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99[2]]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise RuntimeError(f"{non2xx[1]} error responses from {url}")
    return rps, float(p99[1]) * scale


def precompute(url: str) -> float:
    """Store everyone's answer; returns the seconds it took."""
    from api.answers import refresh
    from app import create_app
    from core.db import db

    app = create_app({"DATABASE_URL": url, "SECRET_KEY": "bench"})
    with app.app_context():
        start = time.perf_counter()
        refresh()
        took = time.perf_counter() - start
        db.engine.dispose()
    return took


def check_server_ms(url: str, token: str, ids: list[int]) -> tuple[float, float]:
    """Median server time of a 1,000-person check: from stored answers, and computed afresh."""
    from sqlalchemy import bindparam, text
    from werkzeug.test import EnvironBuilder

    from app import create_app
    from core.db import db

    app = create_app({"DATABASE_URL": url, "SECRET_KEY": "bench"})
    headers = {"Authorization": f"Bearer {token}"}
    rng = random.Random(2)

    def timed(refs: list[int]) -> float:
        """Server time: the WSGI call, from the request's arrival to the last byte of the body."""
        body = json.dumps({"people": refs}).encode()
        environ = EnvironBuilder(
            "/api/v1/training-status/check", method="POST", headers=headers, data=body,
            content_type="application/json", base_url="http://127.0.0.1/",
        ).get_environ()  # fmt: skip
        answer: list[str] = []
        start = time.perf_counter()
        chunks = app(environ, lambda status, _headers, _exc=None: answer.append(status))
        payload = b"".join(chunks)
        took = (time.perf_counter() - start) * 1000
        assert answer == ["200 OK"] and len(json.loads(payload)["results"]) == len(refs)
        return took

    stored = [timed(rng.sample(ids, 1000)) for _ in range(15)]
    computed = []
    for _ in range(5):
        refs = rng.sample(ids, 1000)
        with app.app_context():  # make these answers out of date, as a change would
            db.session.execute(
                text("UPDATE person SET status_rev = status_rev + 1 WHERE id IN :ids").bindparams(
                    bindparam("ids", expanding=True)
                ),
                {"ids": refs},
            )
            db.session.commit()
        computed.append(timed(refs))
    with app.app_context():
        db.engine.dispose()
    return statistics.median(stored[3:]), statistics.median(computed)


def answers_ms(url: str, ids: list[int]) -> tuple[float, float]:
    """Median time to read 1,000 stored answers and encode them as a check does (the lookup's
    query alone, and the whole): what the API costs beyond the request itself."""
    from api.answers import _LOOKUP_POSTGRESQL, _LOOKUP_SQLITE, CheckDoc, encode, find_answers
    from api.answers import policies as all_policies
    from app import create_app
    from core.db import db, utcnow

    app = create_app({"DATABASE_URL": url, "SECRET_KEY": "bench"})
    rng = random.Random(3)
    query, whole = [], []
    with app.test_request_context():
        [policy] = all_policies()
        for _ in range(15):
            people = sorted(rng.sample(ids, 1000))
            reader = db.reader
            sql = _LOOKUP_POSTGRESQL if reader.postgresql else _LOOKUP_SQLITE
            start = time.perf_counter()
            reader.all(sql, policy_id=policy.id, policy_rev=policy.rev, now=utcnow(),
                       ids=people, emails=[])  # fmt: skip
            query.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            found = find_answers(policy, [str(i) for i in people])
            encode(CheckDoc(True, [answer.doc for answer in found.values()]))
            whole.append((time.perf_counter() - start) * 1000)
    with app.app_context():
        db.engine.dispose()
    return statistics.median(query[3:]), statistics.median(whole[3:])


def main() -> None:
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: `make bench` installs it")
    workdir = Path(tempfile.mkdtemp(prefix="countersign-bench-"))
    url = f"sqlite:///{workdir / 'bench.db'}"
    token, ids = build_database(url)
    precompute_s = precompute(url)
    env = {**os.environ, "COUNTERSIGN_DATABASE_URL": url, "COUNTERSIGN_SECRET_KEY": "bench",
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    bare_port, app_port = free_port(), free_port()
    script = workdir / "random_person.lua"
    script.write_text(RANDOM_PATH % (min(ids), max(ids), "/api/v1/people/", "/training-status"))
    bare_script = workdir / "random_ping.lua"
    bare_script.write_text(RANDOM_PATH % (min(ids), max(ids), "/ping/", ""))
    auth = f"Authorization: Bearer {token}"
    processes = [serve("bench.bare_app:app", bare_port, env), serve("wsgi:app", app_port, env)]
    bare, app = [], []
    try:
        wrk(f"http://127.0.0.1:{bare_port}/", auth, str(bare_script), "1s")  # warm up: not counted
        wrk(f"http://127.0.0.1:{app_port}/", auth, str(script), "1s")
        # Alternate the two, so that a noisy neighbour on a shared machine hits both alike.
        for _ in range(ROUNDS):
            bare.append(wrk(f"http://127.0.0.1:{bare_port}/", auth, str(bare_script)))
            app.append(wrk(f"http://127.0.0.1:{app_port}/", auth, str(script)))
    finally:
        for p in processes:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=20)
    check_ms, computed_ms = check_server_ms(url, token, ids)
    query_ms, answers_total_ms = answers_ms(url, ids)
    shutil.rmtree(workdir, ignore_errors=True)
    ratio = statistics.median(a[0] / b[0] for a, b in zip(app, bare, strict=True))
    bare_rps, bare_p99 = (statistics.median(x) for x in zip(*bare, strict=True))
    app_rps, app_p99 = (statistics.median(x) for x in zip(*app, strict=True))
    server = "sync workers" if THREADS == "1" else f"workers x {THREADS} threads"
    print(f"people: {len(ids)}; gunicorn, {WORKERS} {server}; SQLite; wrk -t2 -c{CONNECTIONS} "
          f"-d{DURATION}, {ROUNDS} alternating rounds, medians")  # fmt: skip
    print(f"bare Flask JSON endpoint:   {bare_rps:8.0f} req/s   p99 {bare_p99:6.2f} ms")
    print(f"one person's status (API):  {app_rps:8.0f} req/s   p99 {app_p99:6.2f} ms   "
          f"ratio {ratio:.2f} (target >= 0.5, p99 < 5 ms)")  # fmt: skip
    rounds = [f"{a[0]:.0f}/{b[0]:.0f} req/s, p99 {a[1]:.1f}/{b[1]:.1f} ms"
              for a, b in zip(app, bare, strict=True)]  # fmt: skip
    print("  each round, status/bare: " + "; ".join(rounds))
    print(
        f"1,000-person check, server time (median of 12, in process): {check_ms:.1f} ms "
        "(target < 20 ms)"
    )
    print(f"  of which 1,000 stored answers read and encoded (median of 12): {answers_total_ms:.1f} ms"
          f" (the query alone: {query_ms:.1f} ms)")  # fmt: skip
    print(f"1,000-person check, every answer computed afresh (median of 5): {computed_ms:.1f} ms")
    print(f"storing all {len(ids):,} answers (after a new version, say): {precompute_s:.1f} s")


if __name__ == "__main__":
    main()
