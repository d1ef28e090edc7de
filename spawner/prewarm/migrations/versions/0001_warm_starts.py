"""Servers the class pre-warm started, once per student, course and session.

Revision ID: warm0001
Revises:
Create Date: 2026-11-29

Written out in full rather than imported from ``spawner.prewarm.records``, so later changes to the model never
change what this migration creates.
"""

import sqlalchemy as sa
from alembic import op

revision = "warm0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "warm_starts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("course", sa.String(64), nullable=False),
        sa.Column("session_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("warmed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("memory_bytes", sa.Integer, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.Column("detail", sa.Text, nullable=True),
        sa.UniqueConstraint("username", "course", "session_start", name="uq_warm_starts_once_per_session"),
    )


def downgrade() -> None:
    op.drop_table("warm_starts")
