"""API tokens expire

Every token gets an expiry date, at most a year after it is made. Tokens made before this had
none: they expire a year after this upgrade, so no system stops working the day it is installed.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-05 11:40:00
"""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

import core.db

revision: str = '0019'
down_revision: str | None = '0018'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('api_token', schema=None) as batch_op:
        batch_op.add_column(sa.Column('expires_at', core.db.UTCDateTime(), nullable=True))
    op.get_bind().execute(
        sa.text("UPDATE api_token SET expires_at = :at WHERE expires_at IS NULL"),
        {"at": (datetime.now(UTC) + timedelta(days=365)).replace(tzinfo=None)},  # naive UTC
    )
    with op.batch_alter_table('api_token', schema=None) as batch_op:
        batch_op.alter_column('expires_at', existing_type=core.db.UTCDateTime(), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('api_token', schema=None) as batch_op:
        batch_op.drop_column('expires_at')
