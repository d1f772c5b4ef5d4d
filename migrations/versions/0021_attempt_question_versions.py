"""quizzes: attempts reference content-addressed question versions

A quiz attempt kept a full copy of every question it drew (about 5 KB an attempt). From here each
distinct question, as learners were shown it and graded by it, is one ``question_version`` row,
addressed by the SHA-256 of a canonical JSON of its content (``quizzes.versions.content_hash``),
and an attempt's ``drawn`` column, renamed ``question_refs``, holds
``[[version id, question id, key, [option ids as shown]], ...]``.

Every existing attempt is converted in place: its questions become versions (one per distinct
content) and its copy becomes references. Each converted row is rebuilt from what was written and
compared with the copy before the copy is replaced; any difference stops the migration with
nothing changed. The evidence digests cover the questions as rebuilt (``audit.evidence``), which
are the copies exactly, so the digests recorded before this revision still verify after it.

``question_version`` is append-only like the evidence tables (migrations 0011 and 0017): UPDATE,
DELETE and TRUNCATE are refused by triggers, on SQLite an INSERT naming an existing id is refused
(``INSERT OR REPLACE``), and where ``COUNTERSIGN_DATABASE_APP_ROLE`` names the application's role it
loses UPDATE, DELETE and TRUNCATE on it. INSERT is never restricted, so a backup restores row for
row. ``quiz_attempt``'s own guard is lifted only for the conversion, inside this transaction.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-05 15:00:00
"""

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REFUSAL = "is evidence: rows cannot be changed or removed"
BATCH = 1000
# The content of a version, as of this revision (frozen here: the app's code may move on).
CONTENT = ("type", "prompt", "scenario", "options", "explanation", "clause")
DRAWN_KEYS = {"question_id", "key", *CONTENT}
OPTION_KEYS = ("id", "text", "correct")

versions = sa.table(
    "question_version",
    sa.column("id", sa.Integer),
    sa.column("content_hash", sa.String),
    *(sa.column(name, sa.JSON if name == "options" else sa.Text) for name in CONTENT),
)


def _attempts(column: str) -> sa.TableClause:
    return sa.table("quiz_attempt", sa.column("id", sa.Integer), sa.column(column, sa.JSON))


def _content(attempt_id: int, question: Any) -> dict[str, Any]:
    problem = None
    if not isinstance(question, dict) or set(question) != DRAWN_KEYS:
        problem = "a question in an unexpected shape"
    elif not isinstance(question["options"], list) or any(
        not isinstance(o, dict) or set(o) != set(OPTION_KEYS) for o in question["options"]
    ):
        problem = "options in an unexpected shape"
    elif len({o["id"] for o in question["options"]}) != len(question["options"]):
        problem = "two options with one id"
    if problem:
        raise RuntimeError(
            f"quiz attempt {attempt_id} holds {problem}; nothing was converted. Restore the "
            "attempt from a backup, or ask for help, before upgrading."
        )
    content = {name: question[name] for name in CONTENT}
    content["options"] = [
        {name: o[name] for name in OPTION_KEYS}
        for o in sorted(question["options"], key=lambda o: o["id"])
    ]
    return content


def _hash(content: dict[str, Any]) -> str:
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _rebuild(refs: list, by_id: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    drawn = []
    for version_id, question_id, key, order in refs:
        version = by_id[version_id]
        options = {o["id"]: o for o in version["options"]}
        drawn.append(
            {
                "question_id": question_id,
                "key": key,
                **{name: version[name] for name in CONTENT},
                "options": [dict(options[i]) for i in order],
            }
        )
    return drawn


def _load(bind: sa.Connection, ids: set[int]) -> dict[int, dict[str, Any]]:
    found: dict[int, dict[str, Any]] = {}
    wanted = sorted(ids)
    for start in range(0, len(wanted), BATCH):
        rows = bind.execute(
            sa.select(versions).where(versions.c.id.in_(wanted[start : start + BATCH]))
        )
        for row in rows:
            found[row.id] = {name: row._mapping[name] for name in CONTENT}
    return found


def _rows(bind: sa.Connection, column: str) -> Any:
    """Every attempt's (id, value of ``column``), a batch at a time in id order."""
    t = _attempts(column)
    after = 0
    while True:
        rows = bind.execute(
            sa.select(t.c.id, t.c[column]).where(t.c.id > after).order_by(t.c.id).limit(BATCH)
        ).all()
        if not rows:
            return
        yield rows
        after = rows[-1][0]


def _lift_attempt_guard(postgresql: bool) -> None:
    if postgresql:
        op.execute("ALTER TABLE quiz_attempt DISABLE TRIGGER quiz_attempt_no_update")
    else:
        op.execute("DROP TRIGGER quiz_attempt_no_update")


def _restore_attempt_guard(postgresql: bool) -> None:
    if postgresql:
        op.execute("ALTER TABLE quiz_attempt ENABLE TRIGGER quiz_attempt_no_update")
    else:
        op.execute(
            "CREATE TRIGGER quiz_attempt_no_update BEFORE UPDATE ON quiz_attempt "
            f"BEGIN SELECT RAISE(ABORT, 'quiz_attempt {REFUSAL}'); END"
        )


def _ids(bind: sa.Connection, hashes: list[str]) -> dict[str, int]:
    query = sa.select(versions.c.content_hash, versions.c.id)
    return {h: i for h, i in bind.execute(query.where(versions.c.content_hash.in_(hashes)))}


def _convert(bind: sa.Connection) -> None:
    """Copies to references, checking each row rebuilds to its copy before replacing it."""
    t = _attempts("question_refs")
    known: dict[str, int] = {}
    update = (
        sa.update(t)
        .where(t.c.id == sa.bindparam("attempt_id"))
        .values(question_refs=sa.bindparam("refs", type_=sa.JSON))
    )
    for rows in _rows(bind, "question_refs"):
        contents: dict[str, dict[str, Any]] = {}
        per_row = []
        for attempt_id, drawn in rows:
            if not isinstance(drawn, list):
                raise RuntimeError(f"quiz attempt {attempt_id} holds no list of questions")
            hashes = []
            for question in drawn:
                content = _content(attempt_id, question)
                digest = _hash(content)
                contents.setdefault(digest, content)
                hashes.append(digest)
            per_row.append((attempt_id, drawn, hashes))
        missing = sorted(set(contents) - set(known))
        for start in range(0, len(missing), BATCH):
            chunk = missing[start : start + BATCH]
            known |= _ids(bind, chunk)
        new = [{"content_hash": d, **contents[d]} for d in missing if d not in known]
        if new:
            bind.execute(sa.insert(versions), new)
            known |= _ids(bind, [v["content_hash"] for v in new])
        converted = []
        for attempt_id, drawn, hashes in per_row:
            refs = [
                [known[digest], q["question_id"], q["key"], [o["id"] for o in q["options"]]]
                for q, digest in zip(drawn, hashes, strict=True)
            ]
            converted.append((attempt_id, drawn, refs))
        by_id = _load(bind, {ref[0] for _, _, refs in converted for ref in refs})
        for attempt_id, drawn, refs in converted:
            if _rebuild(refs, by_id) != drawn:
                raise RuntimeError(
                    f"quiz attempt {attempt_id} would not rebuild to the questions it holds; "
                    "nothing was converted"
                )
        bind.execute(update, [{"attempt_id": a, "refs": refs} for a, _, refs in converted])


def _convert_back(bind: sa.Connection) -> None:
    t = _attempts("question_refs")
    update = (
        sa.update(t)
        .where(t.c.id == sa.bindparam("attempt_id"))
        .values(question_refs=sa.bindparam("drawn", type_=sa.JSON))
    )
    for rows in _rows(bind, "question_refs"):
        by_id = _load(bind, {ref[0] for _, refs in rows for ref in refs})
        bind.execute(
            update, [{"attempt_id": a, "drawn": _rebuild(refs, by_id)} for a, refs in rows]
        )


def _guards(postgresql: bool) -> list[str]:
    if postgresql:  # evidence_refuse() is migration 0011's
        return [
            "CREATE TRIGGER question_version_no_update BEFORE UPDATE ON question_version "
            "FOR EACH ROW EXECUTE FUNCTION evidence_refuse()",
            "CREATE TRIGGER question_version_no_delete BEFORE DELETE ON question_version "
            "FOR EACH ROW EXECUTE FUNCTION evidence_refuse()",
            "CREATE TRIGGER question_version_no_truncate BEFORE TRUNCATE ON question_version "
            "FOR EACH STATEMENT EXECUTE FUNCTION evidence_refuse()",
        ]
    refuse = f"BEGIN SELECT RAISE(ABORT, 'question_version {REFUSAL}'); END"
    return [
        f"CREATE TRIGGER question_version_no_update BEFORE UPDATE ON question_version {refuse}",
        f"CREATE TRIGGER question_version_no_delete BEFORE DELETE ON question_version {refuse}",
        "CREATE TRIGGER question_version_no_replace BEFORE INSERT ON question_version "
        f"WHEN EXISTS (SELECT 1 FROM question_version WHERE id = NEW.id) {refuse}",
    ]


def upgrade() -> None:
    op.create_table(
        "question_version",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=20), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("scenario", sa.Text(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("explanation", sa.Text(), nullable=False),
        sa.Column("clause", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_question_version")),
        sa.UniqueConstraint("content_hash", name=op.f("uq_question_version_content_hash")),
    )
    bind = op.get_bind()
    postgresql = bind.dialect.name == "postgresql"
    _lift_attempt_guard(postgresql)
    op.execute("ALTER TABLE quiz_attempt RENAME COLUMN drawn TO question_refs")
    _convert(bind)
    _restore_attempt_guard(postgresql)
    for statement in _guards(postgresql):
        op.execute(statement)
    role = os.environ.get("COUNTERSIGN_DATABASE_APP_ROLE", "").strip()
    if postgresql and role:
        revoke_changes(bind, role)


def revoke_changes(bind: sa.Connection, role: str) -> None:
    """The application's own role adds question versions and never changes or removes one."""
    quoted = bind.dialect.identifier_preparer.quote(role)
    bind.execute(sa.text(f"REVOKE UPDATE, DELETE, TRUNCATE ON question_version FROM {quoted}"))


def downgrade() -> None:
    bind = op.get_bind()
    postgresql = bind.dialect.name == "postgresql"
    _lift_attempt_guard(postgresql)
    _convert_back(bind)
    op.execute("ALTER TABLE quiz_attempt RENAME COLUMN question_refs TO drawn")
    _restore_attempt_guard(postgresql)
    for kind in ("update", "delete", "truncate" if postgresql else "replace"):
        on = " ON question_version" if postgresql else ""
        op.execute(f"DROP TRIGGER question_version_no_{kind}{on}")
    op.drop_table("question_version")
