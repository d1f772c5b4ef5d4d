"""audit log: hash-chained, append-only events; person.erased_at for erasure after retention

The audit table refuses UPDATE and DELETE through triggers on both backends (and TRUNCATE on
PostgreSQL). Where ``COUNTERSIGN_DATABASE_APP_ROLE`` names the role the application connects as
(a deployment where migrations run as the table owner), that role's UPDATE, DELETE and TRUNCATE
grants on the table are revoked as well.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28 03:48:10.723610
"""

import os
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import core.db

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REFUSAL = "audit_event is append-only: rows cannot be changed or removed"

SQLITE_TRIGGERS = [
    f"CREATE TRIGGER audit_event_no_{event.lower()} BEFORE {event} ON audit_event "
    f"BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END"
    for event in ("UPDATE", "DELETE")
]
POSTGRESQL_TRIGGERS = [
    f"""CREATE FUNCTION audit_event_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION '{REFUSAL}'; END $$""",
    "CREATE TRIGGER audit_event_no_change BEFORE UPDATE OR DELETE ON audit_event "
    "FOR EACH ROW EXECUTE FUNCTION audit_event_refuse()",
    "CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON audit_event "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_event_refuse()",
]


def upgrade() -> None:
    op.create_table(
        "audit_event",
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("at", core.db.UTCDateTime(), nullable=False),
        sa.Column("event", sa.String(length=60), nullable=False),
        sa.Column("actor_id", sa.Integer(), nullable=True),
        sa.Column("subject_type", sa.String(length=40), nullable=True),
        sa.Column("subject_id", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_event")),
    )
    op.create_index("ix_audit_event_actor_seq", "audit_event", ["actor_id", "seq"])
    op.create_index("ix_audit_event_at", "audit_event", ["at"])
    op.create_index("ix_audit_event_event_seq", "audit_event", ["event", "seq"])
    # A plain ADD COLUMN: a batch rebuild of person on SQLite would drop its status triggers (0006).
    op.add_column("person", sa.Column("erased_at", core.db.UTCDateTime(), nullable=True))

    bind = op.get_bind()
    postgresql = bind.dialect.name == "postgresql"
    for statement in POSTGRESQL_TRIGGERS if postgresql else SQLITE_TRIGGERS:
        op.execute(statement)
    role = os.environ.get("COUNTERSIGN_DATABASE_APP_ROLE", "").strip()
    if postgresql and role:
        revoke_changes(bind, role)


def revoke_changes(bind: sa.Connection, role: str) -> None:
    """The application's own role may add audit rows but never change or remove them."""
    quoted = bind.dialect.identifier_preparer.quote(role)
    bind.execute(sa.text(f"REVOKE UPDATE, DELETE, TRUNCATE ON audit_event FROM {quoted}"))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_event_no_truncate ON audit_event")
        op.execute("DROP TRIGGER audit_event_no_change ON audit_event")
        op.execute("DROP FUNCTION audit_event_refuse()")
    else:
        op.execute("DROP TRIGGER audit_event_no_update")
        op.execute("DROP TRIGGER audit_event_no_delete")
    with op.batch_alter_table("person") as batch_op:
        batch_op.drop_column("erased_at")
    op.drop_index("ix_audit_event_event_seq", table_name="audit_event")
    op.drop_index("ix_audit_event_at", table_name="audit_event")
    op.drop_index("ix_audit_event_actor_seq", table_name="audit_event")
    op.drop_table("audit_event")
