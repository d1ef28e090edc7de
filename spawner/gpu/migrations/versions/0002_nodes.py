"""GPU ledger across nodes: every holding and usage interval names its node; a device is unique per node.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-01

A ledger from before (one server) keeps its rows: they are on the node ``local``, the node a single-server
lab is. Two nodes may both have a device ``0``, so the unique key becomes (node, device_uuid). Batch mode,
since SQLite changes constraints only by copying the table.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("gpu_holdings") as batch:
        batch.add_column(sa.Column("node", sa.String(255), nullable=False, server_default="local"))
        batch.drop_constraint("uq_gpu_holdings_device_uuid", type_="unique")
        batch.create_unique_constraint("uq_gpu_holdings_node_device", ["node", "device_uuid"])
    with op.batch_alter_table("gpu_usage_intervals") as batch:
        batch.add_column(sa.Column("node", sa.String(255), nullable=False, server_default="local"))


def downgrade() -> None:
    with op.batch_alter_table("gpu_usage_intervals") as batch:
        batch.drop_column("node")
    with op.batch_alter_table("gpu_holdings") as batch:
        batch.drop_constraint("uq_gpu_holdings_node_device", type_="unique")
        batch.create_unique_constraint("uq_gpu_holdings_device_uuid", ["device_uuid"])
        batch.drop_column("node")
