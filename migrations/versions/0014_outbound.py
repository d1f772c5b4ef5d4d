"""outbound and approvals: webhooks, decisions, token scopes; mail_failure

``mail_failure`` keeps recent email send failures (a certificate that could not be verified, a
refused password) so that administrators are shown them; it holds no personal data or secrets.
Webhook deliveries recorded the remote server's own error text; it is replaced by generic words.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05 08:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import core.db

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "mail_failure",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", core.db.UTCDateTime(), nullable=False),
        sa.Column("reason", sa.String(length=40), nullable=False),
        sa.Column("detail", sa.String(length=300), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mail_failure")),
    )
    op.create_index("ix_mail_failure_at", "mail_failure", ["at"])
    op.execute(
        "UPDATE webhook_delivery SET last_error = CASE WHEN last_status IS NULL "
        "THEN 'could not connect' "
        "ELSE 'the receiving server answered ' || CAST(last_status AS VARCHAR(10)) END "
        "WHERE last_error IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_index("ix_mail_failure_at", table_name="mail_failure")
    op.drop_table("mail_failure")
