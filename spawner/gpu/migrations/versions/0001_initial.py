"""GPU ledger tables: holdings, usage intervals, course quotas, user overrides, audit log.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Written out in full rather than imported from ``spawner.gpu.ledger``, so later changes to the
models never change what this migration creates.
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gpu_holdings",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("device_uuid", sa.String(128), nullable=False),
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("course", sa.String(64), nullable=False),
        sa.Column("server_name", sa.String(255), nullable=False),
        sa.Column("container_name", sa.String(255), nullable=True),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("device_uuid", name="uq_gpu_holdings_device_uuid"),
    )
    op.create_index("ix_gpu_holdings_server", "gpu_holdings", ["username", "server_name"])
    op.create_table(
        "gpu_usage_intervals",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("course", sa.String(64), nullable=False),
        sa.Column("device_uuid", sa.String(128), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_reason", sa.Text, nullable=True),
    )
    op.create_index("ix_gpu_usage_intervals_course_user", "gpu_usage_intervals", ["course", "username"])
    op.create_index("ix_gpu_usage_intervals_device_open", "gpu_usage_intervals", ["device_uuid", "ended_at"])
    op.create_table(
        "gpu_course_quotas",
        sa.Column("course", sa.String(64), primary_key=True),
        sa.Column("max_concurrent_gpus", sa.Integer, nullable=True),
        sa.Column("gpu_hours_per_student", sa.Float, nullable=True),
    )
    op.create_table(
        "gpu_user_overrides",
        sa.Column("username", sa.String(255), primary_key=True),
        sa.Column("course", sa.String(64), primary_key=True),
        sa.Column("gpu_hours", sa.Float, nullable=True),
        sa.Column("max_gpus", sa.Integer, nullable=True),
    )
    op.create_table(
        "gpu_audit_log",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(512), nullable=False),
        sa.Column("old_value", sa.Text, nullable=True),
        sa.Column("new_value", sa.Text, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
    )
    op.create_index("ix_gpu_audit_log_at", "gpu_audit_log", ["at"])


def downgrade() -> None:
    op.drop_table("gpu_audit_log")
    op.drop_table("gpu_user_overrides")
    op.drop_table("gpu_course_quotas")
    op.drop_table("gpu_usage_intervals")
    op.drop_table("gpu_holdings")
