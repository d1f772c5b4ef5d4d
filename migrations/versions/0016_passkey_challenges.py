"""second factor: passkey challenges kept on the server

A passkey challenge is usable once: the answer that uses it deletes its row, so replaying a
signed answer with an old session cookie finds no challenge. Only the challenge's hash is kept.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05 09:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import core.db

revision: str = '0016'
down_revision: str | None = '0015'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "passkey_challenge",
        sa.Column("challenge_hash", sa.String(length=64), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("purpose", sa.String(length=10), nullable=False),
        sa.Column("expires_at", core.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["person.id"],
            name=op.f("fk_passkey_challenge_person_id_person"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("challenge_hash", name=op.f("pk_passkey_challenge")),
    )
    op.create_index("ix_passkey_challenge_expires", "passkey_challenge", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_passkey_challenge_expires", table_name="passkey_challenge")
    op.drop_table("passkey_challenge")
