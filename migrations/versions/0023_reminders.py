"""reminders: settings and what was sent

- ``reminder_settings``: one row of what is sent and when (absent: the defaults).
- ``reminder``: every reminder queued, unique per person, kind and training cycle, so a reminder
  is sent at most once however many workers run the job.
- ``digest_choice``: an SLT member's or governor's own choice about the weekly digest.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-05 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import core.db

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reminder_settings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("first_after_days", sa.Integer(), nullable=False),
        sa.Column("every_days", sa.Integer(), nullable=False),
        sa.Column("max_times", sa.Integer(), nullable=False),
        sa.Column("quiet_from", sa.Integer(), nullable=False),
        sa.Column("quiet_until", sa.Integer(), nullable=False),
        sa.Column("not_started_on", sa.Boolean(), nullable=False),
        sa.Column("expiring_on", sa.Boolean(), nullable=False),
        sa.Column("expired_on", sa.Boolean(), nullable=False),
        sa.Column("runners_on", sa.Boolean(), nullable=False),
        sa.Column("digest_on", sa.Boolean(), nullable=False),
        sa.Column("owner_on", sa.Boolean(), nullable=False),
        sa.Column("updated_at", core.db.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reminder_settings")),
    )
    op.create_table(
        "reminder",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=30), nullable=False),
        sa.Column("cycle", sa.String(length=200), nullable=False),
        sa.Column("policy_id", sa.Integer(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("created_at", core.db.UTCDateTime(), nullable=False),
        sa.Column("due_at", core.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["person_id"], ["person.id"], name=op.f("fk_reminder_person_id_person"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["policy_id"], ["policy.id"], name=op.f("fk_reminder_policy_id_policy"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reminder")),
        sa.UniqueConstraint("person_id", "kind", "cycle", name=op.f("uq_reminder_person_id_kind_cycle")),
    )  # fmt: skip
    with op.batch_alter_table("reminder", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_reminder_person_id"), ["person_id"], unique=False)
    op.create_table(
        "digest_choice",
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("weekly_digest", sa.Boolean(), nullable=False),
        sa.Column("changed_at", core.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["person_id"], ["person.id"], name=op.f("fk_digest_choice_person_id_person"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("person_id", name=op.f("pk_digest_choice")),
    )  # fmt: skip


def downgrade() -> None:
    op.drop_table("digest_choice")
    with op.batch_alter_table("reminder", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reminder_person_id"))
    op.drop_table("reminder")
    op.drop_table("reminder_settings")
