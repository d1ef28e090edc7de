"""SSH public keys of users (one key, one user).

Revision ID: ssh0001
Revises:
Create Date: 2026-11-29

Written out in full rather than imported from ``spawner.ssh.keys``, so later changes to the model never
change what this migration creates.
"""

import sqlalchemy as sa
from alembic import op

revision = "ssh0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ssh_public_keys",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.String(128), nullable=False),
        sa.Column("algorithm", sa.String(64), nullable=False),
        sa.Column("public_key", sa.Text, nullable=False),
        sa.Column("comment", sa.String(255), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("fingerprint", name="uq_ssh_public_keys_fingerprint"),
    )
    op.create_index("ix_ssh_public_keys_username", "ssh_public_keys", ["username"])


def downgrade() -> None:
    op.drop_table("ssh_public_keys")
