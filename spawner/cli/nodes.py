"""``teachlab nodes``: what each swarm node carries: servers, reserved CPUs and memory, GPUs held and free.

Thin glue: docker-py reads the swarm's nodes (from the manager this command runs on) and the students'
containers on each node's engine; the ledger gives the GPU holdings; the pure ``spawner.cluster`` adds them up
(``capacity_table``) and ``render`` makes the table.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from ..cluster.capacity import NodeCapacity, capacity_table, holdings_off_the_nodes
from ..cluster.facts import node_from_swarm, placed_from_container
from ..cluster.placement import GIB, Node, PlacedServer
from ..core.contract import Labels
from ..core.problems import TeachlabError
from .engines import add_engine_argument, engine_urls, node_engine


def render(
    rows: Sequence[NodeCapacity], off_the_nodes: Sequence[PlacedServer] = (), uncounted: Sequence[str] = ()
) -> tuple[Table, list[str]]:
    """The per-node table, and one line per thing an admin should look at (printed below it, unwrapped)."""
    table = Table(
        "node",
        "role",
        "state",
        "servers",
        "CPUs reserved",
        "memory reserved",
        "GPUs held",
        "GPUs free",
        box=None,
        header_style="bold",
    )
    notes = []
    for row in rows:
        table.add_row(
            row.name,
            row.role,
            "ready" if row.ready else "down or drained",
            "?" if row.name in uncounted else str(row.servers),
            f"{row.reserved_cpus:g} of {row.cpus:g}",
            f"{row.reserved_memory_bytes / GIB:.1f} of {row.memory_bytes / GIB:.1f} GiB",
            ", ".join(row.gpus_held) or "-",
            ", ".join(row.gpus_free) or "-",
        )
        if row.overcommitted:
            notes.append(f"{row.name} has more reserved than it has now (did it shrink?)")
        if row.gpus_unknown:
            notes.append(
                f"{row.name}: the ledger holds {', '.join(row.gpus_unknown)}, which its {Labels.NODE_GPUS} label does not list"
            )
    for node in uncounted:
        notes.append(f"{node}: servers, CPUs and memory not counted (pass --engine {node}=URL to read its containers)")
    for held in off_the_nodes:
        notes.append(
            f"{held.username}/{held.server_name} holds {', '.join(held.gpu_devices)} on {held.node}, "
            f"which the swarm no longer lists (teachlab gpu release {held.username} {held.server_name})"
        )
    return table, notes


def show(args: argparse.Namespace, console: Console) -> int:
    import docker.errors

    from ..engine.client import connect
    from .gpu import _ledger

    engines = engine_urls(args.engine or [])
    manager = connect()
    try:
        swarm_nodes = manager.nodes.list()
    except docker.errors.APIError as exc:
        raise TeachlabError(
            f"this engine is not a swarm manager ({exc.explanation}); run teachlab nodes on a manager node"
        ) from None
    this_node = manager.info().get("Swarm", {}).get("NodeID")
    nodes: list[Node] = []
    placed: list[PlacedServer] = []
    uncounted: list[str] = []
    for swarm_node in swarm_nodes:
        node = node_from_swarm(swarm_node.attrs)
        nodes.append(node)
        if node.name in engines:
            client = node_engine(node.name, engines[node.name])
        elif swarm_node.id == this_node:
            client = manager
        else:
            uncounted.append(node.name)
            continue
        containers = client.containers.list(all=True, filters={"label": [Labels.USER, Labels.SERVER]})
        placed.extend(filter(None, (placed_from_container(container.attrs, node.name) for container in containers)))
    holdings = [PlacedServer.holding(h.node, h.username, h.server_name, [h.device_uuid]) for h in _ledger(args).holdings()]
    table, notes = render(capacity_table(nodes, placed, holdings), holdings_off_the_nodes(nodes, holdings), uncounted)
    console.print(table)
    for note in notes:
        console.print(note, markup=False)
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("nodes", help="per swarm node: servers, reserved CPUs and memory, GPUs held and free (admins)")
    add_engine_argument(parser, "whose containers to count; the node this runs on is read locally")
    parser.add_argument("--state-dir", help="lab state folder (default: $TEACHLAB_STATE_DIR or .teachlab)")
    parser.add_argument(
        "--ledger-url", help="SQLAlchemy URL of the ledger (default: $TEACHLAB_GPU_LEDGER_URL or the lab's SQLite file)"
    )
    parser.set_defaults(handler=show)
