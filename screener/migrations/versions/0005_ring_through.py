"""Ring-through: the talk time of a call put through to the house, and the caller's recorded name.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("calls") as t:
        t.add_column(sa.Column("talk_s", sa.Float(), nullable=True))
        t.add_column(sa.Column("name_path", sa.String(length=500), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("calls") as t:
        t.drop_column("name_path")
        t.drop_column("talk_s")
