"""Placement across nodes (spawner.cluster.placement): roles, reservations, GPUs, spread, one-line reasons."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spawner.cluster import Node, NoRoom, PlacedServer, ServerRequest, capacity_table, place
from spawner.cluster.capacity import holdings_off_the_nodes
from spawner.cluster.placement import millicpus, node_uses

GIB = 1 << 30


def cpu_node(name: str, cpus: float = 4, memory_gib: float = 8, ready: bool = True) -> Node:
    return Node(name, "cpu", cpus, int(memory_gib * GIB), ready=ready)


def gpu_node(name: str, devices: tuple[str, ...] = ("0", "1", "2", "3"), cpus: float = 8, memory_gib: float = 32) -> Node:
    return Node(name, "gpu", cpus, int(memory_gib * GIB), devices)


def server(node: str, user: str, cpus: float = 1, memory_gib: float = 2, gpus: tuple[str, ...] = ()) -> PlacedServer:
    return PlacedServer(node, user, "data-analysis", cpus, int(memory_gib * GIB), gpus)


DATA = ServerRequest("data-analysis", cpus=2, memory_bytes=2 * GIB)
DEEP = ServerRequest("deep-learning", cpus=2, memory_bytes=4 * GIB, gpus=1)


def test_a_cpu_server_goes_to_the_cpu_node_with_the_most_free_cpus():
    nodes = [cpu_node("worker-1"), cpu_node("worker-2"), gpu_node("gpu-1")]
    placement = place(DATA, nodes, [server("worker-1", "alice")])
    assert placement.node == "worker-2"
    assert placement.gpu_devices == ()
    assert placement.why == "worker-2: the cpu node with the most free CPUs (4 CPUs)"


def test_ties_go_to_the_first_name():
    assert place(DATA, [cpu_node("worker-2"), cpu_node("worker-1")], []).node == "worker-1"


def test_a_gpu_server_goes_only_to_a_gpu_node_and_gets_its_lowest_free_devices():
    nodes = [cpu_node("worker-1", cpus=64, memory_gib=256), gpu_node("gpu-1"), gpu_node("gpu-2")]
    placed = [server("gpu-1", "bob", gpus=("0",))]
    placement = place(ServerRequest("deep-learning", 2, 4 * GIB, gpus=2), nodes, placed)
    assert (placement.node, placement.gpu_devices) == ("gpu-2", ("0", "1"))
    placed.append(server("gpu-2", "carol", gpus=("0", "1", "3")))
    assert place(DEEP, nodes, placed) == place(DEEP, nodes, placed)  # deterministic
    assert (place(DEEP, nodes, placed).node, place(DEEP, nodes, placed).gpu_devices) == ("gpu-1", ("1",))


@pytest.mark.parametrize(
    "request_, nodes, placed, reason, resource",
    [
        pytest.param(
            DATA,
            [cpu_node("worker-1", cpus=2), cpu_node("worker-2", cpus=2)],
            [server("worker-1", "a", cpus=1.5), server("worker-2", "b", cpus=1)],
            "no cpu node has 2 CPUs free for data-analysis: most free is 1 CPU on worker-2",
            "cpus",
            id="cpus",
        ),
        pytest.param(
            DATA,
            [cpu_node("worker-1", memory_gib=3), cpu_node("worker-2", memory_gib=8)],
            [server("worker-1", "a", cpus=0.5, memory_gib=1.5), server("worker-2", "b", cpus=3, memory_gib=1)],
            "no cpu node with 2 CPUs free also has 2 GiB memory free for data-analysis: most free is 1.5 GiB memory on worker-1",
            "memory",
            id="memory-on-the-nodes-with-cpus",
        ),
        pytest.param(
            DEEP,
            [gpu_node("gpu-1", ("0", "1")), gpu_node("gpu-2", ("0",))],
            [server("gpu-1", "a", gpus=("0", "1")), server("gpu-2", "b", gpus=("0",))],
            "no gpu node has 1 GPU free for deep-learning: most free is 0 GPUs on gpu-1",
            "gpus",
            id="gpus",
        ),
        pytest.param(
            DEEP,
            [gpu_node("gpu-1", ("0", "1"), cpus=4), gpu_node("gpu-2", ("0",), cpus=4)],
            [server("gpu-1", "a", cpus=3, gpus=("0",)), server("gpu-2", "b", cpus=1, gpus=("0",))],
            "no gpu node with 1 GPU free also has 2 CPUs free for deep-learning: most free is 1 CPU on gpu-1",
            "cpus",
            id="cpus-on-the-nodes-with-a-free-gpu",
        ),
        pytest.param(
            DEEP,
            [cpu_node("worker-1", cpus=64)],
            [],
            "the lab has no gpu node for deep-learning; tell your instructor",
            "node",
            id="no-gpu-node",
        ),
        pytest.param(
            DATA,
            [cpu_node("worker-1", ready=False), cpu_node("worker-2", ready=False), gpu_node("gpu-1")],
            [],
            "no cpu node is up for data-analysis (worker-1, worker-2 down); try again later",
            "node",
            id="all-down",
        ),
        pytest.param(
            ServerRequest("data-analysis", cpus=0.5, memory_bytes=512 << 20),
            [cpu_node("worker-1", memory_gib=1)],
            [server("worker-1", "a", cpus=0.5, memory_gib=0.75)],
            "no cpu node with 0.5 CPUs free also has 512 MiB memory free for data-analysis: "
            "most free is 256 MiB memory on worker-1",
            "memory",
            id="mebibytes",
        ),
    ],
)
def test_nothing_fits_gives_one_line_naming_the_resource_and_what_is_free(request_, nodes, placed, reason, resource):
    with pytest.raises(NoRoom) as refused:
        place(request_, nodes, placed)
    assert (refused.value.reason, refused.value.resource, str(refused.value)) == (reason, resource, reason)


def test_a_node_that_is_not_ready_gets_nothing():
    nodes = [cpu_node("worker-1", cpus=16, ready=False), cpu_node("worker-2", cpus=2)]
    assert place(DATA, nodes, []).node == "worker-2"


def test_servers_on_nodes_that_are_gone_are_not_counted():
    assert place(DATA, [cpu_node("worker-1", cpus=2)], [server("worker-9", "a", cpus=2)]).node == "worker-1"


@pytest.mark.parametrize(
    "make, message",
    [
        pytest.param(lambda: Node("", "cpu", 1, GIB), "needs a name", id="no-name"),
        pytest.param(lambda: Node("n", "tpu", 1, GIB), "role must be cpu or gpu", id="role"),  # type: ignore[arg-type]
        pytest.param(lambda: Node("n", "cpu", 0, GIB), "above 0", id="no-cpus"),
        pytest.param(lambda: Node("n", "cpu", 1, GIB, ("0",)), "make it a gpu node", id="gpus-on-a-cpu-node"),
        pytest.param(lambda: Node("n", "gpu", 1, GIB, ("0", "0")), "twice", id="device-twice"),
        pytest.param(lambda: ServerRequest("c", 0, GIB), "above 0", id="request-without-cpus"),
        pytest.param(lambda: node_uses([cpu_node("a"), cpu_node("a")], []), "same name", id="node-twice"),
    ],
)
def test_invalid_facts_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# Properties: a random lab, random servers already placed (each within its node), a random request.

node_names = st.sampled_from(["n1", "n2", "n3", "n4"])


@st.composite
def labs(draw):
    names = draw(st.lists(node_names, min_size=1, max_size=4, unique=True))
    nodes = []
    for name in names:
        role = draw(st.sampled_from(["cpu", "gpu"]))
        devices = tuple(str(i) for i in range(draw(st.integers(0, 4)))) if role == "gpu" else ()
        nodes.append(
            Node(
                name,
                role,
                draw(st.integers(1, 16000)) / 1000,
                draw(st.integers(1, 64)) * (GIB // 4),
                devices,
                ready=draw(st.booleans()),
            )
        )
    placed = []
    for index, node in enumerate(nodes):
        cpus_left, memory_left, devices_left = millicpus(node.cpus), node.memory_bytes, list(node.gpu_devices)
        for number in range(draw(st.integers(0, 4))):
            cpus = draw(st.integers(0, cpus_left))
            memory = draw(st.integers(0, memory_left))
            held = devices_left[: draw(st.integers(0, len(devices_left)))]
            devices_left = devices_left[len(held) :]
            cpus_left, memory_left = cpus_left - cpus, memory_left - memory
            placed.append(PlacedServer(node.name, f"user-{index}-{number}", "course", cpus / 1000, memory, tuple(held)))
    request = ServerRequest(
        "course", draw(st.integers(1, 8000)) / 1000, draw(st.integers(1, 32)) * (GIB // 4), draw(st.integers(0, 3))
    )
    return nodes, placed, request


def _fits(node: Node, placed: list[PlacedServer], request: ServerRequest) -> bool:
    mine = [server for server in placed if server.node == node.name]
    held = {device for server in mine for device in server.gpu_devices}
    return (
        node.ready
        and node.role == request.role
        and sum(millicpus(s.cpus) for s in mine) + millicpus(request.cpus) <= millicpus(node.cpus)
        and sum(s.memory_bytes for s in mine) + request.memory_bytes <= node.memory_bytes
        and len(set(node.gpu_devices) - held) >= request.gpus
    )


@settings(max_examples=400, deadline=None)
@given(labs())
def test_placement_never_overcommits_keeps_roles_and_finds_a_fitting_node_whenever_one_exists(lab):
    nodes, placed, request = lab
    fitting = [node.name for node in nodes if _fits(node, placed, request)]
    try:
        placement = place(request, nodes, placed)
    except NoRoom as refused:
        assert fitting == [], f"refused ({refused.reason}) though {fitting} fit"
        assert "\n" not in refused.reason
        return
    assert placement.node in fitting
    node = next(node for node in nodes if node.name == placement.node)
    assert node.role == ("gpu" if request.gpus else "cpu")
    held = {device for server in placed if server.node == node.name for device in server.gpu_devices}
    assert len(placement.gpu_devices) == request.gpus
    assert set(placement.gpu_devices) <= set(node.gpu_devices) - held
    after = [*placed, PlacedServer(node.name, "new", "course", request.cpus, request.memory_bytes, placement.gpu_devices)]
    for row in capacity_table(nodes, after):
        assert not row.overcommitted
        assert len(row.gpus_held) + len(row.gpus_free) == len(next(n for n in nodes if n.name == row.name).gpu_devices)


@settings(max_examples=100, deadline=None)
@given(labs())
def test_filling_a_lab_one_server_at_a_time_never_overcommits(lab):
    nodes, placed, request = lab
    placed = list(placed)
    for number in range(40):
        try:
            placement = place(request, nodes, placed)
        except NoRoom:
            break
        placed.append(
            PlacedServer(placement.node, f"new-{number}", "course", request.cpus, request.memory_bytes, placement.gpu_devices)
        )
    assert not any(row.overcommitted for row in capacity_table(nodes, placed))
    devices = [(s.node, d) for s in placed for d in s.gpu_devices]
    assert len(devices) == len(set(devices))


# Capacity table


def test_the_capacity_table_adds_reservations_and_ledger_holdings_per_node():
    nodes = [gpu_node("gpu-1", ("0", "1")), cpu_node("worker-1"), cpu_node("worker-2", ready=False)]
    placed = [
        server("worker-1", "alice", cpus=1, memory_gib=2),
        server("worker-1", "bob", cpus=0.5, memory_gib=1),
        server("gpu-1", "carol", cpus=2, memory_gib=4),
    ]
    holdings = [
        PlacedServer.holding("gpu-1", "carol", "data-analysis", ["1"]),
        PlacedServer.holding("gpu-1", "dave", "deep-learning", ["7"]),
        PlacedServer.holding("gpu-9", "erin", "deep-learning", ["0"]),
    ]
    rows = {row.name: row for row in capacity_table(nodes, placed, holdings)}
    assert list(rows) == ["gpu-1", "worker-1", "worker-2"]
    gpu = rows["gpu-1"]
    assert (gpu.servers, gpu.reserved_cpus, gpu.reserved_memory_bytes) == (2, 2.0, 4 * GIB)
    assert (gpu.gpus_held, gpu.gpus_free, gpu.gpus_unknown) == (("1",), ("0",), ("7",))
    worker = rows["worker-1"]
    assert (worker.servers, worker.reserved_cpus, worker.reserved_memory_bytes, worker.cpus) == (2, 1.5, 3 * GIB, 4)
    assert (rows["worker-2"].ready, rows["worker-2"].servers) == (False, 0)
    assert holdings_off_the_nodes(nodes, holdings) == [holdings[2]]


def test_a_node_that_shrank_shows_as_overcommitted():
    [row] = capacity_table([cpu_node("worker-1", cpus=1)], [server("worker-1", "a", cpus=2)])
    assert row.overcommitted
