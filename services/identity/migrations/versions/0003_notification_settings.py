"""people's notification settings: WhatsApp opt-in, quiet hours, digest, preferences

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 10:00:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0003'
down_revision: Union[str, Sequence[str], None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('people', schema=None) as batch_op:
        batch_op.add_column(sa.Column('whatsapp_opt_in', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column('whatsapp_opted_in_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('quiet_hours_start', sa.String(length=5), nullable=True))
        batch_op.add_column(sa.Column('quiet_hours_end', sa.String(length=5), nullable=True))
        batch_op.add_column(sa.Column('digest_weekday', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('digest_hour', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('preferences', sa.Text(), server_default='{}', nullable=False))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('people', schema=None) as batch_op:
        batch_op.drop_column('preferences')
        batch_op.drop_column('digest_hour')
        batch_op.drop_column('digest_weekday')
        batch_op.drop_column('quiet_hours_end')
        batch_op.drop_column('quiet_hours_start')
        batch_op.drop_column('whatsapp_opted_in_at')
        batch_op.drop_column('whatsapp_opt_in')
