"""initial schema

Revision ID: 0001
Revises: 
"""

import sqlalchemy as sa
from alembic import op


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('list_entries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('list', sa.String(length=8), nullable=False),
    sa.Column('pattern', sa.String(length=40), nullable=False),
    sa.Column('label', sa.String(length=200), nullable=False),
    sa.Column('source', sa.String(length=40), nullable=False),
    sa.Column('days', sa.Integer(), nullable=True),
    sa.Column('time_from', sa.String(length=5), nullable=True),
    sa.Column('time_to', sa.String(length=5), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('hit_count', sa.Integer(), nullable=False),
    sa.Column('last_hit_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('pattern')
    )
    op.create_table('number_notes',
    sa.Column('e164', sa.String(length=20), nullable=False),
    sa.Column('note', sa.Text(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('e164')
    )
    op.create_table('sip_status',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('since', sa.DateTime(), nullable=False),
    sa.Column('last_error', sa.String(length=300), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('users',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('login', sa.String(length=64), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('login')
    )
    op.create_table('calls',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('ended_at', sa.DateTime(), nullable=True),
    sa.Column('call_id', sa.String(length=255), nullable=False),
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('from_raw', sa.Text(), nullable=False),
    sa.Column('pai_raw', sa.Text(), nullable=True),
    sa.Column('called_line', sa.String(length=255), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('caller_raw', sa.String(length=128), nullable=False),
    sa.Column('e164', sa.String(length=20), nullable=True),
    sa.Column('number_type', sa.String(length=24), nullable=False),
    sa.Column('country', sa.String(length=3), nullable=True),
    sa.Column('withheld', sa.Boolean(), nullable=False),
    sa.Column('decision', sa.String(length=8), nullable=False),
    sa.Column('rule_id', sa.Integer(), nullable=True),
    sa.Column('rule', sa.String(length=200), nullable=False),
    sa.Column('reason', sa.String(length=300), nullable=False),
    sa.Column('outcome', sa.String(length=24), nullable=True),
    sa.Column('digits', sa.String(length=32), nullable=False),
    sa.Column('duration_s', sa.Float(), nullable=True),
    sa.Column('voicemail_path', sa.String(length=500), nullable=True),
    sa.Column('voicemail_heard', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['rule_id'], ['list_entries.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.create_index('ix_calls_e164_started', ['e164', 'started_at'], unique=False)
        batch_op.create_index('ix_calls_outcome_started', ['outcome', 'started_at'], unique=False)
        batch_op.create_index('ix_calls_started', ['started_at', 'id'], unique=False)




def downgrade() -> None:

    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.drop_index('ix_calls_started')
        batch_op.drop_index('ix_calls_outcome_started')
        batch_op.drop_index('ix_calls_e164_started')

    op.drop_table('calls')
    op.drop_table('users')
    op.drop_table('sip_status')
    op.drop_table('number_notes')
    op.drop_table('list_entries')

