"""List entries can be switched off without deleting them; presets remember that they were applied once.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("list_entries") as t:
        t.add_column(sa.Column("enabled", sa.Boolean(), server_default=sa.true(), nullable=False))
    op.create_table(
        "applied_presets",
        sa.Column("name", sa.String(length=40), primary_key=True),
        sa.Column("applied_at", sa.DateTime(), nullable=False),
    )
    # presets applied before this revision left their name in the source of their entries; the dashboard
    # wrote "preset it", the CLI "preset:it": one spelling from now on
    op.execute("UPDATE list_entries SET source = 'preset:' || substr(source, 8) WHERE source LIKE 'preset %'")
    op.execute("INSERT INTO applied_presets (name, applied_at) SELECT DISTINCT substr(source, 8), CURRENT_TIMESTAMP"
               " FROM list_entries WHERE source LIKE 'preset:%'")


def downgrade() -> None:
    op.drop_table("applied_presets")
    with op.batch_alter_table("list_entries") as t:
        t.drop_column("enabled")
