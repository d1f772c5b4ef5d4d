"""Benchmark: training-status lookups under gunicorn against a bare Flask endpoint.

Builds a database of 10,000 people with a spread of progress, starts gunicorn (2 sync workers) on
127.0.0.1 for the app and for a bare Flask JSON endpoint, loads each with wrk (8 connections, a
bounded duration), and times a 1,000-person check in process. Prints a table for the README.
Talks only to 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

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
DURATION = os.environ.get("BENCH_DURATION", "10s")
CONNECTIONS = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_database(url: str) -> tuple[str, list[int]]:
    from sqlalchemy import insert, select

    from api.tokens import create_token
    from app import create_app
    from core.db import db, utcnow
    from core.migrate import upgrade
    from people.models import Person, PersonRole
    from people.roles import ROLES
    from training.cli import publish_all
    from training.models import Acknowledgement, AcknowledgementModule, Policy, ReadReceipt
    from training.publishing import current_version

    app = create_app({"DATABASE_URL": url, "SECRET_KEY": "bench"})
    with app.app_context():
        upgrade()
        publish_all()
        s = db.session
        now = utcnow()
        rng = random.Random(1)
        people = [{"email": f"p{n}@bench.example", "name": f"Person {n}", "active": n % 50 != 0,
                   "auth_version": 1, "created_at": now} for n in range(PEOPLE)]  # fmt: skip
        s.execute(insert(Person), people)
        ids = list(s.scalars(select(Person.id).order_by(Person.id)))
        s.execute(
            insert(PersonRole), [{"person_id": i, "role": rng.choice(list(ROLES))} for i in ids]
        )
        version = current_version(s, s.scalar(select(Policy)))
        mvs = [mv.id for mv in version.module_versions]
        receipts, acks = [], []
        for i in ids:
            done = rng.choice([0, 3, len(mvs), len(mvs)])
            receipts += [{"person_id": i, "module_version_id": mv, "seq": 0, "at": now - timedelta(days=3)}
                         for mv in mvs[:done]]  # fmt: skip
            if done == len(mvs) and rng.random() < 0.7:
                acks.append(i)
        s.execute(insert(ReadReceipt), receipts)
        for i in acks:
            ack = Acknowledgement(
                person_id=i, policy_version_id=version.id, seq=0, declaration="d", typed_name="x",
                at=now - timedelta(days=2), ip="127.0.0.1", user_agent="bench",
            )  # fmt: skip
            s.add(ack)
            s.flush()
            s.execute(
                insert(AcknowledgementModule),
                [{"acknowledgement_id": ack.id, "module_version_id": mv} for mv in mvs],
            )
        token = create_token(s, "bench", ["training:read"]).secret
        s.commit()
        db.engine.dispose()
    return token, ids


def serve(module: str, port: int, env: dict[str, str]) -> subprocess.Popen:
    process = subprocess.Popen(
        [str(ROOT / ".venv/bin/gunicorn"), "--workers", "2", "--bind", f"127.0.0.1:{port}",
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


def wrk(url: str, header: str | None = None) -> tuple[float, float]:
    args = ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{DURATION}", "--latency", url]
    if header:
        args[1:1] = ["-H", header]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99[2]]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise RuntimeError(f"{non2xx[1]} error responses from {url}")
    return rps, float(p99[1]) * scale


def check_server_ms(url: str, token: str, ids: list[int]) -> float:
    from app import create_app
    from core.db import db

    app = create_app({"DATABASE_URL": url, "SECRET_KEY": "bench"})
    client = app.test_client()
    refs = random.Random(2).sample(ids, 1000)
    headers = {"Authorization": f"Bearer {token}"}
    times = []
    for _ in range(15):
        start = time.perf_counter()
        response = client.post(
            "/api/v1/training-status/check", json={"people": refs}, headers=headers
        )
        times.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200
    with app.app_context():
        db.engine.dispose()
    return statistics.median(times[3:])


def main() -> None:
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: `make bench` installs it")
    workdir = Path(tempfile.mkdtemp(prefix="countersign-bench-"))
    url = f"sqlite:///{workdir / 'bench.db'}"
    token, ids = build_database(url)
    env = {**os.environ, "COUNTERSIGN_DATABASE_URL": url, "COUNTERSIGN_SECRET_KEY": "bench",
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    bare_port, app_port = free_port(), free_port()
    processes = [serve("bench.bare_app:app", bare_port, env), serve("app:app", app_port, env)]
    try:
        bare_rps, bare_p99 = wrk(f"http://127.0.0.1:{bare_port}/ping")
        person = ids[len(ids) // 2]
        app_rps, app_p99 = wrk(
            f"http://127.0.0.1:{app_port}/api/v1/people/{person}/training-status",
            f"Authorization: Bearer {token}",
        )
    finally:
        for p in processes:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=20)
    check_ms = check_server_ms(url, token, ids)
    shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"people: {len(ids)}; wrk -t2 -c{CONNECTIONS} -d{DURATION}; gunicorn, 2 sync workers; SQLite"
    )
    print(f"bare Flask JSON endpoint:   {bare_rps:8.0f} req/s   p99 {bare_p99:6.2f} ms")
    print(f"one person's status (API):  {app_rps:8.0f} req/s   p99 {app_p99:6.2f} ms   "
          f"ratio {app_rps / bare_rps:.2f} (target >= 0.5, p99 < 5 ms)")  # fmt: skip
    print(
        f"1,000-person check, server time (median of 12, in process): {check_ms:.1f} ms (target < 20 ms)"
    )


if __name__ == "__main__":
    main()
