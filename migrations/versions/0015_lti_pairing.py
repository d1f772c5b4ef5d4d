"""lti: link requests bound to the launching browser

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05 09:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0015'
down_revision: str | None = '0014'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Requests in flight have no pairing code, so nobody could confirm them: they are dropped,
    # and the LMS users launch again to be shown a code.
    op.get_bind().execute(sa.text("DELETE FROM lti_link_request"))
    with op.batch_alter_table('lti_link_request', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pairing_hash', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('lms_name', sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('lti_link_request', schema=None) as batch_op:
        batch_op.drop_column('lms_name')
        batch_op.drop_column('pairing_hash')
