"""Benchmark: the governors' report and the CSV export against their floors.

- The completion report page (`GET /reports/`) for 10,000 people, timed in process as server time,
  against the bare SQL aggregation it needs (the same GROUP BY queries through the DB driver).
- The CSV export of 100,000 people (one row each): peak growth of the process's own memory while
  the whole body streams.
Builds its databases in a temporary directory, talks to nothing, stops by itself.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.api_status import build_database  # noqa: E402

REPORT_PEOPLE = int(os.environ.get("BENCH_PEOPLE", "10000"))
CSV_PEOPLE = int(os.environ.get("BENCH_CSV_PEOPLE", "100000"))


def governor_client(url: str):  # type: ignore[no-untyped-def]
    """The app and a test client signed in as a governor."""
    from app import create_app
    from core.db import db
    from people.models import Person, PersonRole
    from people.service import set_password

    app = create_app(
        {"DATABASE_URL": url, "SECRET_KEY": "bench", "WTF_CSRF_ENABLED": False, "MFA_ROLES": ""}
    )
    with app.app_context():
        person = Person(name="Bench Governor", email="governor@bench.example")
        person.role_rows = [PersonRole(role="governor")]
        set_password(person, "bench password 123")
        db.session.add(person)
        db.session.commit()
    client = app.test_client()
    response = client.post(
        "/sign-in", data={"email": "governor@bench.example", "password": "bench password 123"}
    )
    assert response.status_code == 302, response.status_code
    return app, client


def precompute(app) -> float:  # type: ignore[no-untyped-def]
    from api.answers import refresh

    with app.app_context():
        start = time.perf_counter()
        refresh()
        return time.perf_counter() - start


def bare_aggregation_ms(path: Path) -> float:
    """The GROUP BY queries the report needs, straight through sqlite3."""
    queries = [
        "SELECT ps.school, s.standing, count(*) FROM stored_status s "
        "LEFT JOIN person_school ps ON ps.person_id = s.person_id WHERE s.policy_id = 1 "
        "GROUP BY ps.school, s.standing",
        "SELECT pr.role, s.standing, count(*) FROM stored_status s "
        "LEFT JOIN person_role pr ON pr.person_id = s.person_id WHERE s.policy_id = 1 "
        "GROUP BY pr.role, s.standing",
        "SELECT standing, count(*) FROM stored_status WHERE policy_id = 1 GROUP BY standing",
    ]
    connection = sqlite3.connect(path)
    times = []
    for _ in range(15):
        start = time.perf_counter()
        for q in queries:
            connection.execute(q).fetchall()
        times.append((time.perf_counter() - start) * 1000)
    connection.close()
    return statistics.median(times[3:])


def report_ms(client) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(15):
        start = time.perf_counter()
        response = client.get("/reports/")
        times.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200 and b"Completion by school" in response.data
    return statistics.median(times[3:])


def _status_kb(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M)[1])


def csv_export(client) -> tuple[int, float, float]:  # type: ignore[no-untyped-def]
    """Rows exported, seconds taken, and peak memory growth in MB while streaming.

    Memory is the process's anonymous memory (RssAnon), sampled at every chunk: the database
    file's pages that SQLite maps into memory are the kernel's page cache, shared and
    reclaimable, and are not counted.
    """
    before = peak = _status_kb("RssAnon")
    start = time.perf_counter()
    response = client.get("/reports/people.csv?status=", buffered=False)
    lines = 0
    for chunk in response.response:
        lines += chunk.count("\n") if isinstance(chunk, str) else chunk.count(b"\n")
        peak = max(peak, _status_kb("RssAnon"))
    took = time.perf_counter() - start
    response.close()
    return lines - 1, took, (peak - before) / 1024


def main() -> None:
    from core.db import db

    workdir = Path(tempfile.mkdtemp(prefix="countersign-bench-reports-"))
    try:
        path = workdir / "report.db"
        url = f"sqlite:///{path}"
        build_database(url, REPORT_PEOPLE)
        app, client = governor_client(url)
        precompute(app)
        report = report_ms(client)
        bare = bare_aggregation_ms(path)
        with app.app_context():
            db.engine.dispose()

        big = workdir / "csv.db"
        build_database(f"sqlite:///{big}", CSV_PEOPLE)
        app, client = governor_client(f"sqlite:///{big}")
        stored_s = precompute(app)
        rows, csv_s, growth = csv_export(client)
        with app.app_context():
            db.engine.dispose()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"report page, {REPORT_PEOPLE:,} people x 13 modules, SQLite, in process (median of 12)")
    print(f"bare SQL aggregation:        {bare:7.1f} ms")
    print(f"completion report page:      {report:7.1f} ms   ratio {report / bare:.1f} "
          "(target < 300 ms and <= 3x)")  # fmt: skip
    print(f"CSV export of {rows:,} people: {csv_s:.1f} s, peak memory growth {growth:.1f} MB "
          f"(target < 50 MB); storing their answers first took {stored_s:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
