"""``teachlab nodes``'s pure parts: Docker's node and container objects to facts, and the rendered table.

The docker-reading part (``spawner.cli.nodes.show``) needs a live swarm and is not exercised here."""

from __future__ import annotations

import pytest
from rich.console import Console

from spawner.cli.engines import engine_urls
from spawner.cli.main import build_parser, run_handler
from spawner.cli.nodes import render
from spawner.cluster import Node, PlacedServer, capacity_table
from spawner.cluster.facts import node_from_swarm, placed_from_container
from spawner.core.contract import Labels
from spawner.core.problems import TeachlabError

GIB = 1 << 30


def swarm_node(hostname="gpu-1", labels=None, state="ready", availability="active", nano_cpus=8 * 10**9, memory=32 * GIB):
    """The shape of docker-py's ``Node.attrs`` (GET /nodes), trimmed to what is read."""
    return {
        "ID": f"id-{hostname}",
        "Spec": {"Labels": labels or {}, "Role": "worker", "Availability": availability},
        "Description": {"Hostname": hostname, "Resources": {"NanoCPUs": nano_cpus, "MemoryBytes": memory}},
        "Status": {"State": state, "Addr": "10.0.0.2"},
    }


def container(user="alice", server="deep-learning", status="running", nano_cpus=2 * 10**9, memory=4 * GIB, extra=None):
    """The shape of docker-py's ``Container.attrs`` (GET /containers/{id}/json), trimmed."""
    labels = {Labels.USER: user, Labels.SERVER: server, **(extra or {})}
    return {"Config": {"Labels": labels}, "State": {"Status": status}, "HostConfig": {"NanoCpus": nano_cpus, "Memory": memory}}


def test_a_swarm_node_with_role_and_gpu_labels():
    node = node_from_swarm(swarm_node(labels={Labels.NODE_ROLE: "gpu", Labels.NODE_GPUS: "0, 1,2,3"}))
    assert node == Node("gpu-1", "gpu", 8.0, 32 * GIB, ("0", "1", "2", "3"), ready=True)


@pytest.mark.parametrize(
    "attrs, ready",
    [
        pytest.param(swarm_node(), True, id="ready-active"),
        pytest.param(swarm_node(state="down"), False, id="down"),
        pytest.param(swarm_node(availability="drain"), False, id="drained"),
        pytest.param(swarm_node(availability="pause"), False, id="paused"),
    ],
)
def test_only_a_ready_active_node_takes_servers(attrs, ready):
    node = node_from_swarm(attrs)
    assert (node.role, node.ready) == ("cpu", ready)  # no role label: a cpu node


@pytest.mark.parametrize(
    "labels, message",
    [
        pytest.param({Labels.NODE_ROLE: "tpu"}, f"run docker node update --label-add {Labels.NODE_ROLE}=cpu", id="role"),
        pytest.param({Labels.NODE_GPUS: "0,1"}, f"--label-add {Labels.NODE_ROLE}=gpu gpu-1", id="gpus-without-role"),
        pytest.param({Labels.NODE_ROLE: "gpu", Labels.NODE_GPUS: "0,0"}, "lists a GPU device twice", id="device-twice"),
    ],
)
def test_wrong_node_labels_say_which_command_fixes_them(labels, message):
    with pytest.raises(TeachlabError, match=message):
        node_from_swarm(swarm_node(labels=labels))


@pytest.mark.parametrize(
    "attrs, expected",
    [
        pytest.param(container(), PlacedServer("w", "alice", "deep-learning", 2.0, 4 * GIB), id="running"),
        pytest.param(container(status="created"), PlacedServer("w", "alice", "deep-learning", 2.0, 4 * GIB), id="starting"),
        pytest.param(container(status="exited"), None, id="exited-holds-nothing"),
        pytest.param(
            {**container(), "HostConfig": {"CpuQuota": 50_000, "CpuPeriod": 100_000, "Memory": GIB}},
            PlacedServer("w", "alice", "deep-learning", 0.5, GIB),
            id="quota-and-period-as-the-lab-sets-them",
        ),
        pytest.param(container(extra={Labels.HELPER: "volume-init"}), None, id="helper"),
        pytest.param({"Config": {"Labels": {}}, "State": {"Status": "running"}, "HostConfig": {}}, None, id="not-a-student"),
        pytest.param(
            container(nano_cpus=0, memory=0), PlacedServer("w", "alice", "deep-learning", 0.0, 0), id="no-limits-reserve-nothing"
        ),
    ],
)
def test_students_containers_and_what_they_reserve(attrs, expected):
    assert placed_from_container(attrs, "w") == expected


def _text(table) -> str:
    console = Console(width=120, record=True, highlight=False)
    console.print(table)
    return console.export_text()


def test_the_table_shows_each_node_and_what_to_look_at():
    nodes = [
        Node("gpu-1", "gpu", 8, 32 * GIB, ("0", "1")),
        Node("worker-1", "cpu", 4, 8 * GIB),
        Node("worker-2", "cpu", 4, 8 * GIB),
    ]
    placed = [
        PlacedServer("worker-1", "alice", "data-analysis", 1.5, 3 * GIB),
        PlacedServer("gpu-1", "bob", "deep-learning", 2, 4 * GIB),
    ]
    holdings = [
        PlacedServer.holding("gpu-1", "bob", "deep-learning", ["1"]),
        PlacedServer.holding("gpu-1", "carol", "deep-learning", ["5"]),
        PlacedServer.holding("gpu-7", "dave", "deep-learning", ["0"]),
    ]
    table, notes = render(capacity_table(nodes, placed, holdings), [holdings[2]], ["worker-2"])
    lines = [" ".join(line.split()) for line in _text(table).splitlines()] + notes
    assert lines[0] == "node role state servers CPUs reserved memory reserved GPUs held GPUs free"
    assert "gpu-1 gpu ready 2 2 of 8 4.0 of 32.0 GiB 1 0" in lines
    assert "worker-1 cpu ready 1 1.5 of 4 3.0 of 8.0 GiB - -" in lines
    assert "worker-2 cpu ready ? 0 of 4 0.0 of 8.0 GiB - -" in lines
    assert f"gpu-1: the ledger holds 5, which its {Labels.NODE_GPUS} label does not list" in lines
    assert "worker-2: servers, CPUs and memory not counted (pass --engine worker-2=URL to read its containers)" in lines
    assert (
        "dave/deep-learning holds 0 on gpu-7, which the swarm no longer lists (teachlab gpu release dave deep-learning)" in lines
    )


def test_engines_are_node_equals_url():
    assert engine_urls(["worker-1=ssh://admin@worker-1", "gpu-1=tcp://10.0.0.3:2376"]) == {
        "worker-1": "ssh://admin@worker-1",
        "gpu-1": "tcp://10.0.0.3:2376",
    }
    with pytest.raises(TeachlabError, match="write NODE=URL"):
        engine_urls(["worker-1"])


def test_a_bad_engine_option_is_one_error_line(capsys):
    assert run_handler(build_parser().parse_args(["nodes", "--engine", "nonsense"])) == 1
    assert (
        capsys.readouterr().err.strip()
        == "error: --engine 'nonsense': write NODE=URL, e.g. --engine worker-1=ssh://admin@worker-1"
    )
