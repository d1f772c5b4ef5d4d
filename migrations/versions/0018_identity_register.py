"""evidence: who a record names, and the account register

People (email, name, state, roles, schools), the social media accounts on the register and their
runners are digested in the audit chain from this revision on (``audit.evidence.DIGESTED``). The
person row stays updatable (names and emails change; erasure pseudonymises it): the digests, not
the database, say when it was changed behind the application's back.

The register's runner rows keep their history, so the database now holds them to it:
``account_runner`` refuses DELETE (and TRUNCATE on PostgreSQL), and UPDATE except the one change
the application makes, taking a runner off (``removed_at`` from empty to set, nothing else).
``social_account`` refuses DELETE and TRUNCATE: an account is closed, never removed. INSERT is
never restricted, so a backup can be restored row for row; a row inserted behind the application's
back is reported by ``flask audit verify``. Erasure does not touch runner rows.

Rows already there when upgrading have no digest yet: ``flask audit seal`` records them, as for
the evidence tables of revision 0011.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-05 11:10:00
"""

import os
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0018'
down_revision: str | None = '0017'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Every column of account_runner, as of this revision (SQLite's trigger compares them one by one).
RUNNER_COLUMNS = ("id", "account_id", "person_id", "added_at", "added_by_id", "removed_at")
REFUSAL = "is evidence: rows cannot be changed or removed"
REGISTER = ("social_account", "account_runner")  # both refuse DELETE and TRUNCATE


def _sqlite_triggers() -> list[str]:
    unchanged = " AND ".join(f'NEW."{c}" IS OLD."{c}"' for c in RUNNER_COLUMNS if c != "removed_at")
    taken_off = f"OLD.removed_at IS NULL AND NEW.removed_at IS NOT NULL AND {unchanged}"
    refuse = "BEGIN SELECT RAISE(ABORT, '{table} " + REFUSAL + "'); END"
    return [
        "CREATE TRIGGER account_runner_no_update BEFORE UPDATE ON account_runner "
        f"WHEN NOT ({taken_off}) {refuse.format(table='account_runner')}",
        *(
            f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} "
            f"{refuse.format(table=table)}"
            for table in REGISTER
        ),
    ]


def _postgresql_triggers() -> list[str]:
    statements = [
        f"""CREATE FUNCTION register_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION '% {REFUSAL}', TG_TABLE_NAME; END $$""",
        f"""CREATE FUNCTION account_runner_guard() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF OLD.removed_at IS NULL AND NEW.removed_at IS NOT NULL
             AND (to_jsonb(NEW) - 'removed_at') = (to_jsonb(OLD) - 'removed_at') THEN
            RETURN NEW;
          END IF;
          RAISE EXCEPTION '% {REFUSAL}', TG_TABLE_NAME;
        END $$""",
        "CREATE TRIGGER account_runner_no_update BEFORE UPDATE ON account_runner "
        "FOR EACH ROW EXECUTE FUNCTION account_runner_guard()",
    ]
    for table in REGISTER:
        statements += [
            f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION register_refuse()",
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION register_refuse()",
        ]
    return statements


def upgrade() -> None:
    bind = op.get_bind()
    postgresql = bind.dialect.name == "postgresql"
    for statement in _postgresql_triggers() if postgresql else _sqlite_triggers():
        op.execute(statement)
    role = os.environ.get("COUNTERSIGN_DATABASE_APP_ROLE", "").strip()
    if postgresql and role:
        revoke_changes(bind, role)


def revoke_changes(bind: sa.Connection, role: str) -> None:
    """The application's own role may add to the register and take runners off, never remove
    rows."""
    quoted = bind.dialect.identifier_preparer.quote(role)
    bind.execute(sa.text(f"REVOKE DELETE, TRUNCATE ON {', '.join(REGISTER)} FROM {quoted}"))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER account_runner_no_update ON account_runner")
        for table in REGISTER:
            op.execute(f"DROP TRIGGER {table}_no_delete ON {table}")
            op.execute(f"DROP TRIGGER {table}_no_truncate ON {table}")
        op.execute("DROP FUNCTION account_runner_guard()")
        op.execute("DROP FUNCTION register_refuse()")
    else:
        op.execute("DROP TRIGGER account_runner_no_update")
        for table in REGISTER:
            op.execute(f"DROP TRIGGER {table}_no_delete")
