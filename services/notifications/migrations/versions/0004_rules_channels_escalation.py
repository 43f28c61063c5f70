"""rules, channels and escalation: members' notification settings, organisation
codes, the case facts a message needs, notices frozen per (event, rule),
deliveries per notice with quiet-hour holds and channel fallbacks, the log of
attempts and escalation steps, acknowledgement links, spending per month,
digests, and an outbox for the service's own timers

Revision ID: 0004
Revises: 0003
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

revision: str = '0004'
down_revision: Union[str, Sequence[str], None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_AT = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table('organizations') as batch:
        batch.add_column(sa.Column('code', sa.String(8), nullable=True))
    with op.batch_alter_table('recipients') as batch:
        batch.add_column(sa.Column('whatsapp_opt_in', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('quiet_start', sa.String(5), nullable=True))
        batch.add_column(sa.Column('quiet_end', sa.String(5), nullable=True))
        batch.add_column(sa.Column('digest_weekday', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('digest_hour', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('preferences', sa.Text(), nullable=True))
    # a delivery now belongs to a notice; those planned before notices
    # existed are each their event's own notice
    with op.batch_alter_table('deliveries') as batch:
        batch.add_column(sa.Column('notice_id', sa.String(36), nullable=True))
        batch.add_column(sa.Column('not_before', _AT, nullable=True))
        batch.add_column(sa.Column('fallbacks', sa.String(64), nullable=True))
        batch.add_column(sa.Column('provider_code', sa.String(32), nullable=True))
    op.execute("UPDATE deliveries SET notice_id = event_id")
    with op.batch_alter_table('deliveries') as batch:
        batch.alter_column('notice_id', existing_type=sa.String(36), nullable=False)
        batch.drop_constraint('uq_delivery_once', type_='unique')
        batch.create_unique_constraint('uq_delivery_once', ['notice_id', 'recipient_id', 'channel'])
        batch.create_index('ix_deliveries_notice', ['notice_id'])
    op.create_table(
        'cases',
        sa.Column('case_id', sa.String(36), primary_key=True),
        sa.Column('organization_id', sa.String(36), nullable=False),
        sa.Column('survivor_code', sa.String(40), nullable=True),
        sa.Column('focal_point_id', sa.String(36), nullable=True),
        sa.Column('case_lead_id', sa.String(36), nullable=True),
        sa.Column('lead_changed_at', _AT, nullable=True),
        sa.Column('risk_level', sa.String(8), nullable=True),
        sa.Column('closed', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('state_changed_at', _AT, nullable=True),
    )
    op.create_index('ix_cases_organization_id', 'cases', ['organization_id'])
    op.create_table(
        'notices',
        sa.Column('id', sa.String(36), primary_key=True),
        sa.Column('event_id', sa.String(36), nullable=False),
        sa.Column('event_type', sa.String(64), nullable=False),
        sa.Column('rule', sa.String(64), nullable=False),
        sa.Column('kind', sa.String(32), nullable=False),
        sa.Column('urgency', sa.String(16), nullable=False),
        sa.Column('organization_id', sa.String(36), nullable=False),
        sa.Column('case_id', sa.String(36), nullable=True),
        sa.Column('step_ref', sa.String(16), nullable=True),
        sa.Column('frozen', sa.Text(), nullable=False),
        sa.Column('rung', sa.String(16), nullable=True),
        sa.Column('created_at', _AT, nullable=False),
        sa.Column('ack_due_at', _AT, nullable=True),
        sa.Column('wake_at', _AT, nullable=True),
        sa.Column('acknowledged_at', _AT, nullable=True),
        sa.Column('acknowledged_by', sa.String(36), nullable=True),
    )
    op.create_index('ix_notices_event_id', 'notices', ['event_id'])
    op.create_index('ix_notices_case_id', 'notices', ['case_id'])
    op.create_index('ix_notices_wake_at', 'notices', ['wake_at'])
    op.create_table(
        'notice_log',
        sa.Column('id', sa.Integer(), autoincrement=True, primary_key=True),
        sa.Column('notice_id', sa.String(36), nullable=False),
        sa.Column('case_id', sa.String(36), nullable=True),
        sa.Column('organization_id', sa.String(36), nullable=False),
        sa.Column('at', _AT, nullable=False),
        sa.Column('step', sa.String(16), nullable=False),
        sa.Column('rung', sa.String(16), nullable=True),
        sa.Column('recipient_role', sa.String(32), nullable=True),
        sa.Column('channel', sa.String(16), nullable=True),
        sa.Column('code', sa.String(32), nullable=True),
    )
    op.create_index('ix_notice_log_notice_id', 'notice_log', ['notice_id'])
    op.create_index('ix_notice_log_case_id', 'notice_log', ['case_id'])
    op.create_index('ix_notice_log_at', 'notice_log', ['at'])
    op.create_table(
        'acks',
        sa.Column('id', sa.String(16), primary_key=True),
        sa.Column('notice_id', sa.String(36), nullable=False),
        sa.Column('recipient_id', sa.String(36), nullable=False),
        sa.Column('expires_at', _AT, nullable=False),
        sa.Column('used_at', _AT, nullable=True),
        sa.UniqueConstraint('notice_id', 'recipient_id', name='uq_ack_once'),
    )
    op.create_index('ix_acks_notice_id', 'acks', ['notice_id'])
    op.create_table(
        'spending',
        sa.Column('organization_id', sa.String(36), primary_key=True),
        sa.Column('month', sa.String(7), primary_key=True),
        sa.Column('channel', sa.String(16), primary_key=True),
        sa.Column('count', sa.Integer(), nullable=False),
    )
    op.create_table(
        'digests',
        sa.Column('recipient_id', sa.String(36), primary_key=True),
        sa.Column('week', sa.String(8), primary_key=True),
        sa.Column('notice_id', sa.String(36), nullable=False),
    )
    op.create_table(
        'outbox',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('event_id', sa.String(length=36), nullable=False),
        sa.Column('exchange', sa.String(length=100), nullable=False),
        sa.Column('routing_key', sa.String(length=100), nullable=False),
        sa.Column('body', sa.Text(), nullable=False),
        sa.Column('headers', sa.Text(), nullable=False),
        sa.Column('created_at', _AT, nullable=False),
        sa.Column('published_at', _AT, nullable=True),
        sa.Column('claim', sa.String(length=36), nullable=True),
        sa.Column('claimed_until', _AT, nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('event_id'),
    )
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_pending', ['id'], unique=False, postgresql_where=sa.text('published_at IS NULL'),
                              sqlite_where=sa.text('published_at IS NULL'))
        batch_op.create_index('ix_outbox_published', ['published_at'], unique=False,
                              postgresql_where=sa.text('published_at IS NOT NULL'),
                              sqlite_where=sa.text('published_at IS NOT NULL'))


def downgrade() -> None:
    op.drop_table('outbox')
    op.drop_table('digests')
    op.drop_table('spending')
    op.drop_table('acks')
    op.drop_table('notice_log')
    op.drop_table('notices')
    op.drop_table('cases')
    with op.batch_alter_table('deliveries') as batch:
        batch.drop_index('ix_deliveries_notice')
        batch.drop_constraint('uq_delivery_once', type_='unique')
        batch.create_unique_constraint('uq_delivery_once', ['event_id', 'recipient_id', 'channel'])
        batch.drop_column('provider_code')
        batch.drop_column('fallbacks')
        batch.drop_column('not_before')
        batch.drop_column('notice_id')
    with op.batch_alter_table('recipients') as batch:
        for column in ('preferences', 'digest_hour', 'digest_weekday', 'quiet_end', 'quiet_start', 'whatsapp_opt_in'):
            batch.drop_column(column)
    with op.batch_alter_table('organizations') as batch:
        batch.drop_column('code')
