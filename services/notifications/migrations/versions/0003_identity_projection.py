"""identity projection: every role of a recipient, her phone and name, the
revision identity last told, supervisions, and organisations' language

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
    with op.batch_alter_table('recipients') as batch:
        batch.alter_column('role', new_column_name='roles', existing_type=sa.String(32), type_=sa.String(200),
                           existing_nullable=False)
        batch.alter_column('address', existing_type=sa.String(320), nullable=True)
        batch.add_column(sa.Column('name', sa.String(200), nullable=True))
        batch.add_column(sa.Column('phone', sa.String(16), nullable=True))
        batch.add_column(sa.Column('revision', sa.Integer(), nullable=False, server_default='0'))
    with op.batch_alter_table('organizations') as batch:
        batch.add_column(sa.Column('language', sa.String(8), nullable=True))
        batch.add_column(sa.Column('revision', sa.Integer(), nullable=False, server_default='0'))
    op.create_table(
        'supervisions',
        sa.Column('user_id', sa.String(36), nullable=False),
        sa.Column('organization_id', sa.String(36), nullable=False),
        sa.PrimaryKeyConstraint('user_id', 'organization_id'),
    )
    op.create_index('ix_supervisions_organization_id', 'supervisions', ['organization_id'])


def downgrade() -> None:
    op.drop_index('ix_supervisions_organization_id', 'supervisions')
    op.drop_table('supervisions')
    with op.batch_alter_table('organizations') as batch:
        batch.drop_column('revision')
        batch.drop_column('language')
    with op.batch_alter_table('recipients') as batch:
        batch.drop_column('revision')
        batch.drop_column('phone')
        batch.drop_column('name')
        batch.alter_column('address', existing_type=sa.String(320), nullable=False)
        batch.alter_column('roles', new_column_name='role', existing_type=sa.String(200), type_=sa.String(32),
                           existing_nullable=False)
