"""retention indexes: old published outbox rows, handled events and finished
deliveries are deleted by age

Revision ID: 0003
Revises: 0002
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0003'
down_revision: Union[str, Sequence[str], None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_published', ['published_at'], unique=False, postgresql_where=sa.text('published_at IS NOT NULL'), sqlite_where=sa.text('published_at IS NOT NULL'))


def downgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_published', postgresql_where=sa.text('published_at IS NOT NULL'), sqlite_where=sa.text('published_at IS NOT NULL'))
