"""Work that follows the student (issue 14): ``teachlab work move`` moves a student's work volume from one worker to
the other, and the hub's next start finds it there; after a node was lost and the student started elsewhere with
an empty work folder, the earlier work comes back beside the new work.

The swarm and the lab are tests/support/scale.py's (its module fixtures: tests/cluster/conftest.py): Docker-in-Docker
nodes on this machine, the test lab's hub on this machine placing servers on the two CPU workers. The command runs
as an admin runs it on the manager: a subprocess with DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH, each
worker's engine given with --engine. A lost node is a worker's container stopped (``docker stop``), and it comes
back with ``docker start``: its dockerd, its swarm membership and its node agent (which mounts the work volumes
again) restart with it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from spawner.core.contract import IMAGE, Labels
from support.cluster import ENGINE_PORT, Cluster, Node
from support.hub import signed_in_users
from support.probes import probe_arguments
from support.scale import COURSE, admin_cli_environment, servers_by_node

pytestmark = [pytest.mark.cluster, pytest.mark.docker, pytest.mark.hub]

STUDENT = "alice"
WORK = IMAGE.work_mount
BIG_FILE_MIB = 64  # a notebook's data set: the figure the move's time is measured on
NODE_STATE_TIMEOUT = 120


def work_move(cluster: Cluster, certificates, *arguments: str) -> subprocess.CompletedProcess:
    """``teachlab work move`` as an admin runs it on the manager, both CPU workers' engines given."""
    engines = [a for node in cluster.nodes[1:3] for a in ("--engine", f"{node.name}={cluster.engine_url(node)}")]
    return subprocess.run(
        [sys.executable, "-m", "spawner.cli", "work", "move", STUDENT, COURSE, *arguments, *engines],
        env=admin_cli_environment(cluster, certificates),
        capture_output=True,
        text=True,
        timeout=600,
    )


def in_server(node: Node, lab, script: str) -> str:
    """A shell command in the student's container, as the student (the container's user)."""
    return node.docker("exec", lab.names.container(STUDENT, COURSE), "sh", "-c", script).stdout


def start_and_follow(student, course: str) -> list[str]:
    """Start the student's server and read its progress messages (all of them, while the start is pending) until it
    is ready. The start request waits for the server up to the hub's slow-spawn timeout, so it runs beside."""
    with ThreadPoolExecutor(1) as pool:
        started = pool.submit(student.start, course)
        messages: list[str] = []
        deadline = time.monotonic() + 240
        while not messages and time.monotonic() < deadline:
            progress = student.api("GET", f"/users/{STUDENT}/servers/{course}/progress", stream=True)
            if progress.status_code != 200:
                time.sleep(0.2)  # the start is not pending yet
                continue
            for line in progress.iter_lines(decode_unicode=True):
                if line and line.startswith("data:"):
                    event = json.loads(line.removeprefix("data:"))
                    messages.append(event.get("message", ""))
                    if event.get("ready") or event.get("failed"):
                        break
        response = started.result()
    assert response.status_code in (201, 202), response.text
    student.wait_until_ready(course, timeout=240)
    assert len(messages) > 1, f"the progress was read only once the server was ready: {messages}"
    return messages


def stop(student) -> None:
    student.stop(COURSE)
    student.wait_until_stopped(COURSE, timeout=120)


def work_volumes(node: Node) -> list[str]:
    """The student's work volumes on a node's engine, by their labels."""
    listed = node.docker("volume", "ls", "-q", "--filter", f"label={Labels.USER}={STUDENT}").stdout
    return listed.split()


def swarm_state(cluster: Cluster, node: Node) -> str:
    return cluster.nodes[0].docker("node", "inspect", "--format", "{{.Status.State}}", node.name).stdout.strip()


def wait_for_swarm_state(cluster: Cluster, node: Node, state: str) -> float:
    began = time.monotonic()
    while swarm_state(cluster, node) != state:
        assert time.monotonic() - began < NODE_STATE_TIMEOUT, f"{node.name} is not {state} after {NODE_STATE_TIMEOUT} s"
        time.sleep(1)
    return time.monotonic() - began


def engine_answers(cluster: Cluster, node: Node, certificates) -> bool:
    session = requests.Session()
    session.trust_env = False
    try:
        url = cluster.engine_url(node).replace("tcp://", "https://") + "/_ping"
        return session.get(url, cert=certificates.hub_tls["client_cert"], verify=str(certificates.ca_path), timeout=3).ok
    except requests.RequestException:
        return False


@pytest.mark.timeout(2400)
def test_the_admin_moves_a_students_work_and_brings_back_work_left_on_a_lost_node(scale_lab, swarm):
    cluster, certificates = swarm.cluster, swarm.certificates
    student = signed_in_users(scale_lab)(STUDENT)  # in intro-python's group, through the provider
    first_worker, second_worker = cluster.nodes[1:3]
    images = scale_lab.layout.volumes / "images"

    # The student writes on the worker the hub placed them on.
    start_and_follow(student, COURSE)
    ((holder, placed),) = [(node, names) for node, names in servers_by_node(cluster).items() if names]
    assert placed == [STUDENT]
    source, target = (first_worker, second_worker) if holder == first_worker.name else (second_worker, first_worker)
    checksum = in_server(
        source,
        scale_lab,
        f"echo 'first notes' > {WORK}/notes.txt && mkdir -p {WORK}/data && "
        f"head -c {BIG_FILE_MIB << 20} /dev/urandom > {WORK}/data/set.bin && cd {WORK} && sha256sum data/set.bin",
    )

    # While the server runs, the move is refused in one line.
    running = work_move(cluster, certificates, "--to", target.name)
    assert running.returncode == 1 and running.stdout == "", running
    assert running.stderr.strip().splitlines() == [
        f"error: {STUDENT}'s server for {COURSE} runs on {source.name} ({scale_lab.names.container(STUDENT, COURSE)}): "
        "stop it first (the student, or an admin on the hub)"
    ]
    stop(student)

    # The move: copied engine to engine, checked, and gone from the source (its Docker volume and its filesystem).
    moved = work_move(cluster, certificates, "--to", target.name)
    assert moved.returncode == 0, moved.stderr
    print(f"\n{moved.stdout.strip()}")
    assert moved.stdout.startswith(f"moved {STUDENT}'s work for {COURSE}: ")
    assert f" from {source.name} to {target.name}, as the work folder, checked, in " in moved.stdout
    volume = scale_lab.names.home_volume(STUDENT, COURSE)
    assert work_volumes(source) == [] and work_volumes(target) == [volume]
    assert source.sh(f"ls -A {images}", check=False).stdout.split() == []
    # The same size limit as before (the size of the source's filesystem: intro-python's resources.disk).
    assert target.sh(f"stat -c %s {images}/{volume}.ext4").stdout.strip() == str(2 << 30)

    # The student's next start goes where the work is now, and finds it.
    messages = start_and_follow(student, COURSE)
    assert servers_by_node(cluster)[target.name] == [STUDENT], servers_by_node(cluster)
    assert not any("earlier work" in message for message in messages), messages
    assert in_server(target, scale_lab, f"cat {WORK}/notes.txt; cd {WORK} && sha256sum data/set.bin") == (
        f"first notes\n{checksum}"
    )
    assert in_server(target, scale_lab, f"stat -c %u {WORK}/notes.txt").strip() == str(IMAGE.uid)
    stop(student)

    # The node that holds the work is lost; the student starts on the other one with an empty work folder, told so.
    lost, other = target, source
    address = lost.address
    lost.container.stop(timeout=0)
    down_after = wait_for_swarm_state(cluster, lost, "down")
    print(f"the swarm saw {lost.name} down after {down_after:.0f} s")
    messages = start_and_follow(student, COURSE)
    assert servers_by_node(cluster, [other])[other.name] == [STUDENT]
    told = (
        f"Your earlier work for Introduction to Python is on {lost.name}, which cannot take it now: this server starts "
        f"with an empty work folder, and that work stays on {lost.name} (ask the lab's admins to bring it back)"
    )
    assert told in messages, messages
    assert in_server(other, scale_lab, f"ls -A {WORK}").split() == [".ipython"]  # the server's own settings only
    in_server(other, scale_lab, f"echo 'new work' > {WORK}/new.txt && echo 'clash' > {WORK}/notes.txt")
    stop(student)

    # The lost node comes back: its container started again, its engine, its swarm membership and its node agent.
    began = time.monotonic()
    lost.container.start()
    lost.wait_for_dockerd()
    assert lost.address == address, f"{lost.name} came back on {lost.address}, not {address} (its engine's certificate)"
    while not engine_answers(cluster, lost, certificates):
        assert time.monotonic() - began < NODE_STATE_TIMEOUT, f"the engine of {lost.name} does not answer over TLS"
        time.sleep(1)
    wait_for_swarm_state(cluster, lost, "ready")
    agent = ("ps", "-q", "--filter", f"label={Labels.HELPER}=node-agent", "--filter", "status=running")
    while not lost.docker(*agent).stdout.strip():  # dockerd restarts it (restart policy "always"); it mounts the volumes
        assert time.monotonic() - began < NODE_STATE_TIMEOUT, f"the node agent on {lost.name} did not start again"
        time.sleep(1)
    print(f"{lost.name} back (engine, swarm) {time.monotonic() - began:.0f} s after docker start")
    assert work_volumes(lost) == [volume]  # the earlier work, kept on the lost node

    # The earlier work comes back beside the new work, in a folder of its own; nothing of the new work is lost.
    merged = work_move(cluster, certificates, "--to", other.name)
    assert merged.returncode == 0, merged.stderr
    print(merged.stdout.strip())
    folder = f"earlier-work-from-{lost.name}"
    assert f" from {lost.name} to {other.name}, into {folder}/ of the work folder, checked, in " in merged.stdout
    assert work_volumes(lost) == [] and work_volumes(other) == [volume]
    messages = start_and_follow(student, COURSE)
    assert servers_by_node(cluster, [other])[other.name] == [STUDENT]
    assert not any("earlier work" in message for message in messages), messages
    listing = in_server(
        other, scale_lab, f"cd {WORK} && cat new.txt notes.txt {folder}/notes.txt && sha256sum {folder}/data/set.bin"
    )
    assert listing == f"new work\nclash\nfirst notes\n{checksum.replace('data/', f'{folder}/data/')}"
    assert in_server(other, scale_lab, f"stat -c %u {WORK}/{folder}").strip() == str(IMAGE.uid)
    stop(student)

    # Moving it again is refused in one line: the work is where it was asked to go.
    again = work_move(cluster, certificates, "--to", other.name)
    assert again.returncode == 1
    assert again.stderr.strip() == f"error: {STUDENT}'s work for {COURSE} is on {other.name} already; nothing to move"

    # The node that came back lost its iptables rules with its network namespace (as a rebooted machine does): the
    # hub installs its egress policy again before it places a server there, since its node agent started again.
    back = work_move(cluster, certificates, "--to", lost.name)
    assert back.returncode == 0, back.stderr
    start_and_follow(student, COURSE)
    assert servers_by_node(cluster, [lost])[lost.name] == [STUDENT]
    manager = cluster.nodes[0]
    targets = {
        "the hub's API (control)": (scale_lab.gateway, scale_lab.ports.hub),
        "the manager's Docker API": (manager.address, ENGINE_PORT),
    }
    reached = json.loads(lost.docker(*probe_arguments(scale_lab.names.container(STUDENT, COURSE), targets)).stdout)
    assert reached["the hub's API (control)"] == "open" and reached["the manager's Docker API"] != "open", reached
    stop(student)
