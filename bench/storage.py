"""Benchmark: how much space the evidence takes, on a demo federation built by ``flask demo``.

Builds the demo (10,000 people unless ``--people N``) into a temporary instance on SQLite and
reports the database file's size, and per quiz attempt: the bytes of its stored references
(``question_refs``), of its whole row (every column's stored length), and of the copy of the
questions it would have kept before attempts referred to question versions (the drawn list as JSON,
as the JSON column wrote it). Then times ``flask audit verify`` over it, which rebuilds every
attempt's questions to check its digest. Talks to nothing, stops by itself.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ROW_COLUMNS = (
    "id", "public_id", "person_id", "module_version_id", "bank_id", "started_at", "expires_at",
    "pass_mark", "show_answers", "question_refs",
)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=10_000)
    people = parser.parse_args().people

    from sqlalchemy import text

    from app import create_app
    from core.db import db
    from core.migrate import upgrade
    from quizzes.versions import drawn_of

    workdir = Path(tempfile.mkdtemp(prefix="countersign-bench-storage-"))
    try:
        path = workdir / "countersign.db"
        app = create_app({"DATABASE_URL": f"sqlite:///{path}", "SECRET_KEY": "bench"})
        app.instance_path = str(workdir)
        with app.app_context():
            upgrade()
        started = time.perf_counter()
        result = app.test_cli_runner().invoke(args=["demo", "--people", str(people)])
        built = time.perf_counter() - started
        if result.exit_code != 0:
            raise SystemExit(result.output)
        with app.app_context():
            s = db.session
            attempts = s.scalar(text("SELECT count(*) FROM quiz_attempt"))
            refs = s.scalar(text("SELECT sum(length(question_refs)) FROM quiz_attempt"))
            row = s.scalar(
                text(f"SELECT sum({' + '.join(f'length({c})' for c in ROW_COLUMNS)}) "
                     "FROM quiz_attempt")
            )  # fmt: skip
            versions = s.scalar(text("SELECT count(*) FROM question_version"))
            copies = 0
            after = 0
            while True:
                batch = s.execute(
                    text("SELECT id, question_refs FROM quiz_attempt WHERE id > :a "
                         "ORDER BY id LIMIT 2000"), {"a": after},
                ).all()  # fmt: skip
                if not batch:
                    break
                asked = drawn_of(s, [json.loads(r) for _, r in batch])
                copies += sum(len(json.dumps(drawn)) for drawn in asked)
                after = batch[-1][0]
            s.rollback()
            s.close()
            db.engine.dispose()  # the last connection to close folds the write-ahead log in
        size = path.stat().st_size + sum(f.stat().st_size for f in workdir.glob("*.db-*"))
        started = time.perf_counter()
        checked = app.test_cli_runner().invoke(args=["audit", "verify"])
        verified = time.perf_counter() - started
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"demo of {people:,} people built in {built:.0f} s: {attempts:,} quiz attempts, "
          f"{versions:,} question versions")  # fmt: skip
    print(f"SQLite database: {size / 1e6:,.0f} MB ({size / people / 1e3:.1f} kB a person)")
    print(f"per attempt: references {refs / attempts:,.0f} bytes, whole row {row / attempts:,.0f} "
          f"bytes; the copy it replaces {copies / attempts:,.0f} bytes")  # fmt: skip
    print(f"flask audit verify: {verified:.1f} s, exit status {checked.exit_code}")
    print(checked.output.strip().splitlines()[-1] if checked.output.strip() else "")


if __name__ == "__main__":
    main()
