"""xapi: an outbox of xAPI statements for a Learning Record Store, sent with retry

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28 05:12:40.118203
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import core.db

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "xapi_statement",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("statement_id", sa.String(length=36), nullable=False),
        sa.Column("event_key", sa.String(length=120), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=True),
        sa.Column("verb", sa.String(length=200), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", core.db.UTCDateTime(), nullable=False),
        sa.Column("next_attempt_at", core.db.UTCDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_attempt_at", core.db.UTCDateTime(), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("sent_at", core.db.UTCDateTime(), nullable=True),
        sa.Column("gave_up_at", core.db.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["person.id"],
            name=op.f("fk_xapi_statement_person_id_person"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_xapi_statement")),
        sa.UniqueConstraint("event_key", name=op.f("uq_xapi_statement_event_key")),
        sa.UniqueConstraint("statement_id", name=op.f("uq_xapi_statement_statement_id")),
    )
    op.create_index(
        "ix_xapi_statement_due", "xapi_statement", ["sent_at", "gave_up_at", "next_attempt_at"]
    )
    op.create_index("ix_xapi_statement_person", "xapi_statement", ["person_id"])


def downgrade() -> None:
    op.drop_index("ix_xapi_statement_person", table_name="xapi_statement")
    op.drop_index("ix_xapi_statement_due", table_name="xapi_statement")
    op.drop_table("xapi_statement")
