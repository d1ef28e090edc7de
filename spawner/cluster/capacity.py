"""What each node carries: the table ``teachlab nodes`` prints, made from facts without reading them.

The caller reads the swarm's nodes and the reservations of the servers on them (docker-py) and the ledger's
GPU holdings; ``capacity_table`` only adds them up, so it is tested without a swarm.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .placement import Node, PlacedServer, Role, node_uses


@dataclass(frozen=True)
class NodeCapacity:
    """One row: a node's servers, its reserved and allocatable CPUs and memory, its GPUs held and free.

    ``gpus_unknown`` are devices the ledger says are held on this node but the node does not list (a device
    removed, or a declaration changed): an admin should look.
    """

    name: str
    role: Role
    ready: bool
    servers: int
    reserved_cpus: float
    cpus: float
    reserved_memory_bytes: int
    memory_bytes: int
    gpus_held: tuple[str, ...]
    gpus_free: tuple[str, ...]
    gpus_unknown: tuple[str, ...]

    @property
    def overcommitted(self) -> bool:
        """More reserved than the node has: placement never does this, a node that shrank can."""
        return self.reserved_cpus > self.cpus or self.reserved_memory_bytes > self.memory_bytes


def capacity_table(
    nodes: Sequence[Node], placed: Iterable[PlacedServer], gpu_holdings: Iterable[PlacedServer] = ()
) -> list[NodeCapacity]:
    """One row per node, by name. ``placed`` carry the swarm's reservations, ``gpu_holdings`` the ledger's
    devices (``PlacedServer.holding``); a server in both counts once."""
    holdings = list(gpu_holdings)
    uses = node_uses(nodes, [*placed, *holdings])
    rows = []
    for use in sorted(uses, key=lambda use: use.node.name):
        listed = set(use.node.gpu_devices)
        unknown = sorted({device for held in holdings if held.node == use.node.name for device in held.gpu_devices} - listed)
        rows.append(
            NodeCapacity(
                name=use.node.name,
                role=use.node.role,
                ready=use.node.ready,
                servers=use.servers,
                reserved_cpus=use.reserved_millicpus / 1000,
                cpus=use.node.cpus,
                reserved_memory_bytes=use.reserved_memory_bytes,
                memory_bytes=use.node.memory_bytes,
                gpus_held=use.held_gpus,
                gpus_free=use.free_gpus,
                gpus_unknown=tuple(unknown),
            )
        )
    return rows


def holdings_off_the_nodes(nodes: Sequence[Node], gpu_holdings: Iterable[PlacedServer]) -> list[PlacedServer]:
    """Ledger holdings on nodes the swarm no longer lists: the servers of a node that is gone."""
    names = {node.name for node in nodes}
    return [held for held in gpu_holdings if held.node not in names]
