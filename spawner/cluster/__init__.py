"""Many machines: which node runs a student's server (``placement``) and what each node carries (``capacity``).

Pure core: nothing here imports docker, jupyterhub or tornado. The facts come from the caller (the swarm's
nodes and the servers already placed, read through docker-py by the hub or the CLI; GPUs held, read from the
ledger inside its transaction), and the answers are plain values, tested without a daemon (docs/scale-out.md).
"""

from .capacity import NodeCapacity, capacity_table
from .placement import Node, NoRoom, PlacedServer, Placement, ServerRequest, place

__all__ = [
    "NoRoom",
    "Node",
    "NodeCapacity",
    "PlacedServer",
    "Placement",
    "ServerRequest",
    "capacity_table",
    "place",
]
