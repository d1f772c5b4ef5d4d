"""lti: confirmed identity links

Links to existing people are made only once the person confirms them (a link request until then);
links can be suspended; a login keeps its state in a signed cookie, and only used nonces are
stored. Links to people who already hold a role that sees everyone's records are suspended.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 08:00:00
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import core.db

revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('lti_identity', schema=None) as batch_op:
        batch_op.add_column(sa.Column('how', sa.String(length=20), server_default='earlier', nullable=False))
        batch_op.add_column(sa.Column('suspended_at', core.db.UTCDateTime(), nullable=True))
    # A link made on an email's word to someone who now sees everyone's records signs nobody in.
    op.get_bind().execute(
        sa.text(
            "UPDATE lti_identity SET suspended_at = :now WHERE person_id IN "
            "(SELECT person_id FROM person_role WHERE role IN ('governor', 'slt', 'admin'))"
        ),
        {"now": datetime.now(UTC).replace(tzinfo=None)},  # stored as naive UTC, as everywhere
    )

    op.create_table('lti_link_request',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('platform_id', sa.Integer(), nullable=False),
    sa.Column('subject', sa.String(length=255), nullable=False),
    sa.Column('person_id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=True),
    sa.Column('created_at', core.db.UTCDateTime(), nullable=False),
    sa.Column('expires_at', core.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['person_id'], ['person.id'], name=op.f('fk_lti_link_request_person_id_person')),
    sa.ForeignKeyConstraint(['platform_id'], ['lti_platform.id'], name=op.f('fk_lti_link_request_platform_id_lti_platform'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_lti_link_request')),
    sa.UniqueConstraint('platform_id', 'subject', name=op.f('uq_lti_link_request_platform_id_subject')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_lti_link_request_token_hash'))
    )
    with op.batch_alter_table('lti_link_request', schema=None) as batch_op:
        batch_op.create_index('ix_lti_link_request_person', ['person_id'], unique=False)

    op.create_table('lti_used_nonce',
    sa.Column('nonce', sa.String(length=100), nullable=False),
    sa.Column('expires_at', core.db.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('nonce', name=op.f('pk_lti_used_nonce'))
    )
    with op.batch_alter_table('lti_used_nonce', schema=None) as batch_op:
        batch_op.create_index('ix_lti_used_nonce_expires', ['expires_at'], unique=False)

    # Logins in flight are dropped: their browsers start again from the platform.
    with op.batch_alter_table('lti_login', schema=None) as batch_op:
        batch_op.drop_index('ix_lti_login_expires')
    op.drop_table('lti_login')


def downgrade() -> None:
    op.create_table('lti_login',
    sa.Column('state', sa.String(length=100), nullable=False),
    sa.Column('nonce', sa.String(length=100), nullable=False),
    sa.Column('platform_id', sa.Integer(), nullable=False),
    sa.Column('created_at', core.db.UTCDateTime(), nullable=False),
    sa.Column('expires_at', core.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['platform_id'], ['lti_platform.id'], name=op.f('fk_lti_login_platform_id_lti_platform'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('state', name=op.f('pk_lti_login'))
    )
    with op.batch_alter_table('lti_login', schema=None) as batch_op:
        batch_op.create_index('ix_lti_login_expires', ['expires_at'], unique=False)

    with op.batch_alter_table('lti_used_nonce', schema=None) as batch_op:
        batch_op.drop_index('ix_lti_used_nonce_expires')
    op.drop_table('lti_used_nonce')
    with op.batch_alter_table('lti_link_request', schema=None) as batch_op:
        batch_op.drop_index('ix_lti_link_request_person')
    op.drop_table('lti_link_request')
    # Suspended links are removed rather than quietly revived.
    op.execute(sa.text("DELETE FROM lti_identity WHERE suspended_at IS NOT NULL"))
    with op.batch_alter_table('lti_identity', schema=None) as batch_op:
        batch_op.drop_column('suspended_at')
        batch_op.drop_column('how')
