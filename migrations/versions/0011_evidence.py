"""evidence: immutable rows and their digests

The evidence tables refuse UPDATE and DELETE through triggers on both backends (and TRUNCATE on
PostgreSQL), with two exceptions, each limited to the columns it needs:

- erasure (``people.privacy.erase_person``) adds a row to ``evidence_erasure`` for the person, in
  its own transaction, and removes it before committing. While it is there that person's
  acknowledgements may lose their typed name, address and browser, and their certificates their
  name and PDF; decisions may have a name taken out of their reason and runner snapshot (someone
  may have written the name into any decision's reason).
- a certificate's PDF is stored once, after issuing: ``pdf`` and ``pdf_sha256`` may go from empty to
  set, nothing else, and never for an erased person.

INSERT is never restricted, so a backup can be restored row for row, ids and all. Where
``COUNTERSIGN_DATABASE_APP_ROLE`` names the role the application connects as, that role's DELETE
and TRUNCATE grants on the evidence tables are revoked as well (it needs UPDATE for the two
exceptions above).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 08:00:00
"""

import os
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Every column of each evidence table, as of this revision (SQLite triggers compare them one by one).
COLUMNS: dict[str, tuple[str, ...]] = {
    "acknowledgement": (
        "id", "person_id", "policy_version_id", "seq", "declaration", "typed_name", "at", "ip",
        "user_agent",
    ),
    "acknowledgement_module": ("acknowledgement_id", "module_version_id"),
    "read_receipt": ("id", "person_id", "module_version_id", "seq", "at"),
    "quiz_attempt": (
        "id", "public_id", "person_id", "module_version_id", "bank_id", "started_at",
        "expires_at", "pass_mark", "show_answers", "drawn",
    ),
    "quiz_submission": (
        "id", "attempt_id", "submitted_at", "answers", "correct", "total", "score", "passed",
    ),
    "application_decision": (
        "id", "application_id", "approved", "reason", "decided_by_id", "decided_at",
        "runners_snapshot",
    ),
    "certificate": (
        "id", "code", "person_id", "policy_id", "policy_version_id", "acknowledgement_id",
        "issued_at", "valid_until", "person_name", "policy_title", "version_label",
        "module_titles", "federation_name", "pdf", "pdf_sha256",
    ),
}  # fmt: skip

MARKED = "EXISTS (SELECT 1 FROM evidence_erasure WHERE person_id = OLD.person_id)"
ANY_MARKER = "EXISTS (SELECT 1 FROM evidence_erasure)"
NOT_ERASED = (
    "NOT EXISTS (SELECT 1 FROM person WHERE person.id = OLD.person_id "
    "AND person.erased_at IS NOT NULL)"
)
PDF_STORED = (
    "OLD.pdf IS NULL AND OLD.pdf_sha256 IS NULL AND NEW.pdf IS NOT NULL "
    f"AND NEW.pdf_sha256 IS NOT NULL AND {NOT_ERASED}"
)

# The updates allowed: (condition, the columns that may change under it), any one of them.
ALLOWED: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "acknowledgement": [(MARKED, ("typed_name", "ip", "user_agent"))],
    "application_decision": [(ANY_MARKER, ("reason", "runners_snapshot"))],
    "certificate": [
        (MARKED, ("person_name", "pdf", "pdf_sha256")),
        (PDF_STORED, ("pdf", "pdf_sha256")),
    ],
}

REFUSAL = "is evidence: rows cannot be changed or removed"


def _sqlite_unchanged(table: str, changing: tuple[str, ...]) -> str:
    return " AND ".join(f'NEW."{c}" IS OLD."{c}"' for c in COLUMNS[table] if c not in changing)


def _postgresql_unchanged(changing: tuple[str, ...]) -> str:
    names = ", ".join(f"'{c}'" for c in changing)
    return f"(to_jsonb(NEW) - ARRAY[{names}]) = (to_jsonb(OLD) - ARRAY[{names}])"


def _allowed(table: str, postgresql: bool) -> str | None:
    cases = ALLOWED.get(table)
    if not cases:
        return None
    return " OR ".join(
        f"({condition} AND "
        f"{_postgresql_unchanged(changing) if postgresql else _sqlite_unchanged(table, changing)})"
        for condition, changing in cases
    )


def _sqlite_triggers() -> list[str]:
    statements = []
    for table in COLUMNS:
        refuse = f"BEGIN SELECT RAISE(ABORT, '{table} {REFUSAL}'); END"
        allowed = _allowed(table, postgresql=False)
        when = f"WHEN NOT ({allowed}) " if allowed else ""
        statements += [
            f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} {when}{refuse}",
            f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} {refuse}",
        ]
    return statements


def _postgresql_triggers() -> list[str]:
    statements = [
        f"""CREATE FUNCTION evidence_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION '% {REFUSAL}', TG_TABLE_NAME; END $$"""
    ]
    for table in COLUMNS:
        allowed = _allowed(table, postgresql=True)
        update = "evidence_refuse()"
        if allowed:
            statements.append(
                f"""CREATE FUNCTION {table}_guard() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                  IF {allowed} THEN RETURN NEW; END IF;
                  RAISE EXCEPTION '% {REFUSAL}', TG_TABLE_NAME;
                END $$"""
            )
            update = f"{table}_guard()"
        statements += [
            f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {update}",
            f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION evidence_refuse()",
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION evidence_refuse()",
        ]
    return statements


def upgrade() -> None:
    op.create_table(
        "evidence_erasure",
        sa.Column("person_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("person_id", name=op.f("pk_evidence_erasure")),
    )
    bind = op.get_bind()
    postgresql = bind.dialect.name == "postgresql"
    for statement in _postgresql_triggers() if postgresql else _sqlite_triggers():
        op.execute(statement)
    role = os.environ.get("COUNTERSIGN_DATABASE_APP_ROLE", "").strip()
    if postgresql and role:
        revoke_changes(bind, role)


def revoke_changes(bind: sa.Connection, role: str) -> None:
    """The application's own role may add evidence but never remove it."""
    quoted = bind.dialect.identifier_preparer.quote(role)
    tables = ", ".join(COLUMNS)
    bind.execute(sa.text(f"REVOKE DELETE, TRUNCATE ON {tables} FROM {quoted}"))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in COLUMNS:
            for kind in ("update", "delete", "truncate"):
                op.execute(f"DROP TRIGGER {table}_no_{kind} ON {table}")
            if table in ALLOWED:
                op.execute(f"DROP FUNCTION {table}_guard()")
        op.execute("DROP FUNCTION evidence_refuse()")
    else:
        for table in COLUMNS:
            op.execute(f"DROP TRIGGER {table}_no_update")
            op.execute(f"DROP TRIGGER {table}_no_delete")
    op.drop_table("evidence_erasure")
