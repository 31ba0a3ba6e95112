"""Indexes for the dashboard: list entries by list, and calls that have a voicemail.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_HAS_VOICEMAIL = sa.text("voicemail_path IS NOT NULL")


def upgrade() -> None:
    op.create_index("ix_list_entries_list_pattern", "list_entries", ["list", "pattern"])
    op.create_index("ix_calls_voicemail", "calls", ["started_at", "id"],
                    sqlite_where=_HAS_VOICEMAIL, postgresql_where=_HAS_VOICEMAIL)


def downgrade() -> None:
    op.drop_index("ix_calls_voicemail", "calls")
    op.drop_index("ix_list_entries_list_pattern", "list_entries")
