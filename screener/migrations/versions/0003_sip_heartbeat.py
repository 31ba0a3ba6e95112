"""The service's heartbeat and its untrusted-SIP summary on the sip_status row.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sip_status") as t:
        t.add_column(sa.Column("heartbeat_at", sa.DateTime(), nullable=True))
        t.add_column(sa.Column("pid", sa.Integer(), nullable=True))
        t.add_column(sa.Column("untrusted_count", sa.Integer(), server_default="0", nullable=False))
        t.add_column(sa.Column("untrusted_sources", sa.Integer(), server_default="0", nullable=False))
        t.add_column(sa.Column("untrusted_last_source", sa.String(length=64), server_default="", nullable=False))
        t.add_column(sa.Column("untrusted_last_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sip_status") as t:
        for name in ("untrusted_last_at", "untrusted_last_source", "untrusted_sources", "untrusted_count", "pid",
                     "heartbeat_at"):
            t.drop_column(name)
