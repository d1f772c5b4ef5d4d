"""Benchmark: what the audit log costs to append to, and to verify.

- Appending: 2,000 events, each in its own committed transaction as a request makes it, through
  ``audit.log.record`` (chain lock, head read, HMAC, insert), against the floor of the same number of
  plain INSERTs of a row of the same shape into a table without triggers, each committed.
- Verifying: ``audit.log.verify`` over a log of 50,000 rows, against the floor of reading those rows.
Builds its SQLite database in a temporary directory, talks to nothing, stops by itself.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

APPENDS = 2000
LOG_ROWS = 50_000


def main() -> None:
    from sqlalchemy import text

    from app import create_app
    from audit.log import record, verify
    from core.db import db
    from core.migrate import upgrade

    workdir = Path(tempfile.mkdtemp(prefix="countersign-bench-audit-"))
    try:
        app = create_app({"DATABASE_URL": f"sqlite:///{workdir / 'audit.db'}", "SECRET_KEY": "b"})
        app.instance_path = str(workdir)
        with app.app_context():
            upgrade()
            s = db.session
            s.execute(text("CREATE TABLE floor (seq INTEGER PRIMARY KEY, at TEXT, event TEXT, "
                           "actor_id INTEGER, detail TEXT, prev_hash TEXT, hash TEXT)"))  # fmt: skip
            s.commit()

            started = time.perf_counter()
            for i in range(APPENDS):
                s.execute(
                    text("INSERT INTO floor (at, event, actor_id, detail, prev_hash, hash) "
                         "VALUES ('2026-11-28 10:00:00', 'sign_in.succeeded', :i, '{}', :h, :h)"),
                    {"i": i, "h": "0" * 64},
                )  # fmt: skip
                s.commit()
            floor = time.perf_counter() - started

            started = time.perf_counter()
            for i in range(APPENDS):
                record(s, "sign_in.succeeded", actor_id=i, subject_type="sign_in_attempt",
                       subject_id=i)  # fmt: skip
                s.commit()
            appends = time.perf_counter() - started

            for i in range(LOG_ROWS - APPENDS):
                record(s, "quiz.passed", actor_id=i, subject_type="quiz_attempt", subject_id=i,
                       detail={"module_version": 3, "score": 100})  # fmt: skip
                if i % 1000 == 0:
                    s.commit()
            s.commit()

            started = time.perf_counter()
            rows = s.execute(text("SELECT * FROM audit_event ORDER BY seq")).all()
            read_floor = time.perf_counter() - started
            started = time.perf_counter()
            result = verify(s)
            checking = time.perf_counter() - started
            assert result.ok and result.rows == len(rows) == LOG_ROWS, result.problems

        print(
            f"append, committed each: {appends / APPENDS * 1000:.2f} ms per event, "
            f"{appends / floor:.2f}x a plain committed INSERT ({floor / APPENDS * 1000:.2f} ms)"
        )
        print(f"verify {LOG_ROWS:,} rows: {checking:.2f} s ({LOG_ROWS / checking:,.0f} rows/s), "
              f"reading them alone {read_floor:.2f} s")  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
