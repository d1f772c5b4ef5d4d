"""evidence: the register's guards completed

Revision 0018 made runner rows append-only but left the account rows open to any UPDATE, and on
SQLite let ``INSERT OR REPLACE`` rewrite a row of either table. From here:

- ``social_account`` refuses every UPDATE except two:

  - closing: ``closed_at``, ``closed_by_id`` and ``close_reason`` all go from empty to set, once,
    and nothing else changes (``approvals.rules.close``);
  - erasure's redaction: while an erasure marker exists (``evidence_erasure``), ``handle`` and
    ``close_reason`` may change and nothing else may, and a closing reason stays set or empty as
    it was. Which person's marker is not checked: a handle or reason may name anyone, so the rule
    is "any marker", the simplest one that is sound. On PostgreSQL a marker exists only inside an
    erasure's own transaction (migration 0017); a change of those two columns the chain does not
    record is reported by ``flask audit verify``, as for decisions' free text.

  On PostgreSQL ``INSERT … ON CONFLICT DO UPDATE`` fires the same guard.
- on SQLite an INSERT naming the id of an existing ``social_account`` or ``account_runner`` row
  is refused, as migration 0017 does for the evidence tables: ``INSERT OR REPLACE`` (and
  ``REPLACE INTO``) would otherwise delete and re-insert the row without firing the no-delete
  trigger. A new id is never refused, so a backup still restores row for row.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-05 12:15:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0020'
down_revision: str | None = '0019'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REFUSAL = "is evidence: rows cannot be changed or removed"
REGISTER = ("social_account", "account_runner")  # SQLite: neither takes an existing id again
# Every column of social_account as of this revision (SQLite's trigger compares them one by one).
COLUMNS = (
    "id", "application_id", "platform", "handle", "recorded_by_id", "recorded_at", "closed_at",
    "closed_by_id", "close_reason",
)  # fmt: skip
CLOSING = ("closed_at", "closed_by_id", "close_reason")
REDACTED = ("handle", "close_reason")

CLOSED = " AND ".join(f"OLD.{c} IS NULL AND NEW.{c} IS NOT NULL" for c in CLOSING)
MARKED = "EXISTS (SELECT 1 FROM evidence_erasure)"
REASON_KEPT = "(OLD.close_reason IS NULL) = (NEW.close_reason IS NULL)"


def _sqlite_unchanged(changing: tuple[str, ...]) -> str:
    return " AND ".join(f'NEW."{c}" IS OLD."{c}"' for c in COLUMNS if c not in changing)


def _postgresql_unchanged(changing: tuple[str, ...]) -> str:
    names = ", ".join(f"'{c}'" for c in changing)
    return f"(to_jsonb(NEW) - ARRAY[{names}]) = (to_jsonb(OLD) - ARRAY[{names}])"


def _allowed(postgresql: bool) -> str:
    unchanged = _postgresql_unchanged if postgresql else _sqlite_unchanged
    return (
        f"({CLOSED} AND {unchanged(CLOSING)}) "
        f"OR ({MARKED} AND {REASON_KEPT} AND {unchanged(REDACTED)})"
    )


def _sqlite_triggers() -> list[str]:
    statements = [
        "CREATE TRIGGER social_account_no_update BEFORE UPDATE ON social_account "
        f"WHEN NOT ({_allowed(False)}) "
        f"BEGIN SELECT RAISE(ABORT, 'social_account {REFUSAL}'); END"
    ]
    for table in REGISTER:
        statements.append(
            f"CREATE TRIGGER {table}_no_replace BEFORE INSERT ON {table} "
            f"WHEN EXISTS (SELECT 1 FROM {table} WHERE id = NEW.id) "
            f"BEGIN SELECT RAISE(ABORT, '{table} {REFUSAL}'); END"
        )
    return statements


def _postgresql_triggers() -> list[str]:
    return [
        f"""CREATE FUNCTION social_account_guard() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF {_allowed(True)} THEN RETURN NEW; END IF;
          RAISE EXCEPTION '% {REFUSAL}', TG_TABLE_NAME;
        END $$""",
        "CREATE TRIGGER social_account_no_update BEFORE UPDATE ON social_account "
        "FOR EACH ROW EXECUTE FUNCTION social_account_guard()",
    ]


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for statement in _postgresql_triggers() if postgresql else _sqlite_triggers():
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER social_account_no_update ON social_account")
        op.execute("DROP FUNCTION social_account_guard()")
    else:
        op.execute("DROP TRIGGER social_account_no_update")
        for table in REGISTER:
            op.execute(f"DROP TRIGGER {table}_no_replace")
