"""Which node runs a new student server: a pure, deterministic choice the hub makes before anything starts.

The hub, not Swarm, places servers (docs/scale-out.md): Swarm would wait on a pending task until a timeout and
would pick GPU device ids itself. ``place`` answers at once, from facts the caller reads.

Guarantees (tests/unit/test_cluster_placement.py, with hypothesis):

* Never overcommits: on the chosen node, the CPUs and memory reserved by the servers placed there plus the new
  server's stay within the node's allocatable CPUs and memory, and its GPUs are devices of that node that no
  placed server holds. CPUs are counted in thousandths, so sums are exact.
* Roles are strict: a GPU course's server goes only to a ``gpu`` node, any other only to a ``cpu`` node (a GPU
  node's CPUs and memory are kept for the servers that need its GPUs). A node that is not ready gets nothing.
* A fitting node is found whenever one exists: ``NoRoom`` is raised only when no ready node of the role has the
  GPUs, CPUs and memory free together, and its reason names the resource that ran out, how much is free at
  most and where.
* Spread, so one node's failure touches as few students as possible: among the nodes that fit, the one with the
  most free GPUs (GPU servers), then the most free CPU, then the most free memory, then the first name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from ..core.problems import TeachlabError

Role = Literal["cpu", "gpu"]
ROLES: tuple[Role, ...] = ("cpu", "gpu")
GIB = 1 << 30
MIB = 1 << 20


def millicpus(cpus: float) -> int:
    """CPUs in thousandths (Docker's NanoCPUs / 10**6): sums of these are exact, sums of floats are not."""
    return round(cpus * 1000)


@dataclass(frozen=True)
class Node:
    """One machine that runs student servers: what it may give out (Swarm's allocatable resources).

    ``gpu_devices`` are the ids the ledger hands out on this node, in allocation order (lowest index first);
    two nodes may both have a device ``"0"``.
    """

    name: str
    role: Role
    cpus: float
    memory_bytes: int
    gpu_devices: tuple[str, ...] = ()
    ready: bool = True

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a node needs a name (its hostname in the swarm)")
        if self.role not in ROLES:
            raise ValueError(f"node {self.name}: role must be cpu or gpu, not {self.role!r}")
        if self.cpus <= 0 or self.memory_bytes <= 0:
            raise ValueError(f"node {self.name}: CPUs and memory must be above 0")
        if self.role == "cpu" and self.gpu_devices:
            raise ValueError(f"node {self.name} lists GPUs but its role is cpu; make it a gpu node")
        if len(set(self.gpu_devices)) != len(self.gpu_devices):
            raise ValueError(f"node {self.name} lists a GPU device twice")


@dataclass(frozen=True)
class PlacedServer:
    """A server that already reserves part of a node (running, or placed and still starting)."""

    node: str
    username: str
    server_name: str
    cpus: float
    memory_bytes: int
    gpu_devices: tuple[str, ...] = ()

    @classmethod
    def holding(cls, node: str, username: str, server_name: str, gpu_devices: Iterable[str]) -> PlacedServer:
        """Only the GPUs a server holds on a node (the ledger's view; its CPUs and memory come from the swarm's)."""
        return cls(node, username, server_name, cpus=0, memory_bytes=0, gpu_devices=tuple(gpu_devices))


@dataclass(frozen=True)
class ServerRequest:
    """What a course's server reserves: the course's ``resources.cpu``, ``resources.memory`` and ``gpu``."""

    course: str
    cpus: float
    memory_bytes: int
    gpus: int = 0

    def __post_init__(self) -> None:
        if self.cpus <= 0 or self.memory_bytes <= 0 or self.gpus < 0:
            raise ValueError(f"{self.course}: a server reserves CPUs and memory above 0 and GPUs >= 0")

    @property
    def role(self) -> Role:
        return "gpu" if self.gpus else "cpu"


@dataclass(frozen=True)
class Placement:
    """Where the server goes, which devices it gets there, and why that node (one line for the log)."""

    node: str
    gpu_devices: tuple[str, ...]
    why: str


class NoRoom(TeachlabError):
    """No node can take the server now; ``reason`` is one line for the student, ``resource`` is what ran out
    (``node``, ``gpus``, ``cpus`` or ``memory``)."""

    def __init__(self, reason: str, resource: str):
        super().__init__(reason)
        self.reason = reason
        self.resource = resource


@dataclass(frozen=True)
class NodeUse:
    """A node with what is reserved on it and what is left (free values never negative in a valid state)."""

    node: Node
    servers: int
    reserved_millicpus: int
    reserved_memory_bytes: int
    held_gpus: tuple[str, ...]
    free_gpus: tuple[str, ...]

    @property
    def free_millicpus(self) -> int:
        return millicpus(self.node.cpus) - self.reserved_millicpus

    @property
    def free_memory_bytes(self) -> int:
        return self.node.memory_bytes - self.reserved_memory_bytes


def node_uses(nodes: Sequence[Node], placed: Iterable[PlacedServer]) -> list[NodeUse]:
    """What each node carries, in the order of ``nodes``; servers on nodes not listed (gone) are left out.
    Several entries for one server (its reservation from the swarm, its GPUs from the ledger) add up."""
    by_name = {node.name: node for node in nodes}
    if len(by_name) != len(nodes):
        raise ValueError("two nodes have the same name")
    servers: dict[str, set[tuple[str, str]]] = {name: set() for name in by_name}
    cpus = dict.fromkeys(by_name, 0)
    memory = dict.fromkeys(by_name, 0)
    held: dict[str, set[str]] = {name: set() for name in by_name}
    for server in placed:
        if server.node not in by_name:
            continue
        servers[server.node].add((server.username, server.server_name))
        cpus[server.node] += millicpus(server.cpus)
        memory[server.node] += server.memory_bytes
        held[server.node].update(server.gpu_devices)
    return [
        NodeUse(
            node=node,
            servers=len(servers[node.name]),
            reserved_millicpus=cpus[node.name],
            reserved_memory_bytes=memory[node.name],
            held_gpus=tuple(device for device in node.gpu_devices if device in held[node.name]),
            free_gpus=tuple(device for device in node.gpu_devices if device not in held[node.name]),
        )
        for node in nodes
    ]


def place(request: ServerRequest, nodes: Sequence[Node], placed: Iterable[PlacedServer]) -> Placement:
    """The node (and its free devices, lowest first) for a new server of ``request.course``; NoRoom when none fits."""
    role = request.role
    of_role = [use for use in node_uses(nodes, placed) if use.node.role == role]
    if not of_role:
        raise NoRoom(f"the lab has no {role} node for {request.course}; tell your instructor", "node")
    candidates = [use for use in of_role if use.node.ready]
    if not candidates:
        down = ", ".join(use.node.name for use in of_role)
        raise NoRoom(f"no {role} node is up for {request.course} ({down} down); try again later", "node")
    checks: list[tuple[str, str, Callable[[NodeUse], int], Callable[[int], str]]] = [
        ("cpus", "", lambda use: use.free_millicpus, _cpus),
        ("memory", " memory", lambda use: use.free_memory_bytes, _memory_free),
    ]
    needs = {"cpus": millicpus(request.cpus), "memory": request.memory_bytes, "gpus": request.gpus}
    shown_needs = {"cpus": _cpus(needs["cpus"]), "memory": _memory_needed(needs["memory"]), "gpus": _gpus(request.gpus)}
    if request.gpus:
        checks.insert(0, ("gpus", "", lambda use: len(use.free_gpus), _gpus))
    met: list[str] = []
    for resource, suffix, free, shown in checks:
        fitting = [use for use in candidates if free(use) >= needs[resource]]
        if not fitting:
            best = max(sorted(candidates, key=lambda use: use.node.name), key=free)  # the first name among equals
            beside = f" with {' and '.join(met)} free also" if met else ""
            raise NoRoom(
                f"no {role} node{beside} has {shown_needs[resource]}{suffix} free for {request.course}: "
                f"most free is {shown(max(free(best), 0))}{suffix} on {best.node.name}",
                resource,
            )
        candidates = fitting
        met.append(f"{shown_needs[resource]}{suffix}")
    chosen = min(candidates, key=lambda use: (-len(use.free_gpus), -use.free_millicpus, -use.free_memory_bytes, use.node.name))
    devices = chosen.free_gpus[: request.gpus]
    if request.gpus:
        why = f"{chosen.node.name}: the gpu node with the most free GPUs ({len(chosen.free_gpus)}), then CPUs"
    else:
        why = f"{chosen.node.name}: the cpu node with the most free CPUs ({_cpus(chosen.free_millicpus)})"
    return Placement(node=chosen.node.name, gpu_devices=devices, why=why)


def _cpus(milli: int) -> str:
    value = milli / 1000
    return f"{value:g} CPU" if value == 1 else f"{value:g} CPUs"


def _memory_free(size: int) -> str:
    """Rounded down: a student is never told more is free than is."""
    return _memory(size, math.floor)


def _memory_needed(size: int) -> str:
    """Rounded up: a need is never shown below what it is."""
    return _memory(size, math.ceil)


def _memory(size: int, rounding: Callable[[float], int]) -> str:
    if size >= GIB:
        return f"{rounding(size / GIB * 10) / 10:g} GiB"
    return f"{rounding(size / MIB)} MiB"


def _gpus(count: int) -> str:
    return f"{count} GPU" if count == 1 else f"{count} GPUs"
