"""The servers this hub placed on the swarm's nodes, and the next placement made against them.

The hub, not Swarm, reserves CPUs and memory (docs/scale-out.md): a server holds its course's reservation on its
node from the moment it is placed (before its container exists) until the hub sees it stopped or gone. Pure: no
docker, no jupyterhub; the spawner records and forgets, and calls ``choose`` on its event loop, so a choice and
its record happen with no other placement in between.
"""

from __future__ import annotations

from collections.abc import Sequence

from .placement import Node, NoRoom, PlacedServer, Placement, ServerRequest, place


class PlacementBook:
    """(username, server name) -> the reservation it holds on its node."""

    def __init__(self) -> None:
        self._servers: dict[tuple[str, str], PlacedServer] = {}

    def placed(self) -> list[PlacedServer]:
        return list(self._servers.values())

    def reservation(self, username: str, server_name: str) -> PlacedServer | None:
        return self._servers.get((username, server_name))

    def record(self, server: PlacedServer) -> None:
        """Hold ``server``'s reservation (again: a server's newer record replaces its older one)."""
        self._servers[(server.username, server.server_name)] = server

    def forget(self, username: str, server_name: str) -> None:
        self._servers.pop((username, server_name), None)

    def choose(
        self,
        request: ServerRequest,
        nodes: Sequence[Node],
        *,
        username: str,
        server_name: str,
        preferred: str | None = None,
    ) -> Placement:
        """Place a new server and record its reservation; its own earlier record does not count against it.

        ``preferred`` (the node that holds the student's work) is taken when it fits; otherwise any node that fits,
        as ``place`` chooses. NoRoom when none fits: nothing is recorded then.
        """
        self.forget(username, server_name)
        others = self.placed()
        placement = None
        if preferred:
            try:
                placement = place(request, [node for node in nodes if node.name == preferred], others)
            except NoRoom:
                placement = None
        if placement is None:
            placement = place(request, nodes, others)
        self.record(
            PlacedServer(
                node=placement.node,
                username=username,
                server_name=server_name,
                cpus=request.cpus,
                memory_bytes=request.memory_bytes,
                gpu_devices=placement.gpu_devices,
            )
        )
        return placement
