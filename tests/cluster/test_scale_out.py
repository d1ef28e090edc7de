"""Students' servers across the nodes of a swarm (issue 14): the real hub places them, each node's engine runs them.

The swarm and the lab are tests/support/scale.py's: Docker-in-Docker nodes on this machine (a drained manager running
the stack's registry, two CPU workers, a GPU worker with four fake GPUs: the stand-in nvidia-container-runtime-hook),
the courses published with that registry (pushed, recorded by digest: the workers start without any course image and
pull it by digest), the test lab's provider, proxy and hub on this machine with ``swarm_placement`` on. Servers call the hub through their node's forward, the
proxy reaches them on the port published on their node's address. The tests run in file order: the crowd first
(every worker up), then an admin's moves of a student's work (one worker lost and back), then the CPU workers' bounds
and the loss of one, then the GPU worker's crowd and its loss.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date

import pytest
import requests

from spawner.core.contract import IMAGE, Labels
from spawner.gpu.inventory import GpuDevice
from spawner.gpu.ledger import GpuLedger
from spawner.images.registry import VersionRegistry
from support.accounts import GPU_STUDENTS
from support.cluster import ENGINE_PORT, Cluster, Node
from support.hub import signed_in_users
from support.probes import probe_arguments
from support.scale import (
    COURSE,
    CROWD,
    CROWD_COURSE,
    ENGINE_TIMEOUT_SECONDS,
    GPU_COURSE,
    REGISTRY_PORT,
    admin_cli_environment,
    servers_by_node,
)

pytestmark = [pytest.mark.cluster, pytest.mark.docker, pytest.mark.hub]

STUDENTS = ("alice", "bob", "carol", "dave", "erin")
POLL_SECONDS = 5
STAND_IN_PORTS = {"the hub's database": 5432, "the proxy's API": 8001}  # the registry itself runs on the manager


TEACHER = "prof-lee"  # an instructor of intro-python, and of its copies
DATA = "/home/jovyan/data/datasets"


def start_at_once(admin, course: str, names) -> dict:
    """Every start request sent together (each user exists first, made by the admin); name -> response."""
    made = admin.api("POST", "/users", json={"usernames": list(names)})
    assert made.status_code in (201, 409), made.text
    with ThreadPoolExecutor(len(names)) as pool:
        return dict(zip(names, pool.map(lambda name: admin.start(course, user=name), names), strict=True))


def teachlab_nodes(lab, cluster: Cluster, certificates) -> str:
    """``teachlab nodes`` as an admin runs it on the manager, every worker's engine given with --engine."""
    env = admin_cli_environment(cluster, certificates) | {"TEACHLAB_GPU_LEDGER_URL": lab.hub_settings().ledger_url}
    engines = [argument for node in cluster.nodes[1:] for argument in ("--engine", f"{node.name}={cluster.engine_url(node)}")]
    result = subprocess.run(
        [sys.executable, "-m", "spawner.cli", "nodes", *engines], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def wait_all_ready(admin, course: str, names, timeout: float) -> float:
    began = time.monotonic()
    for name in names:
        admin.wait_until_ready(course, user=name, timeout=max(timeout - (time.monotonic() - began), 1))
    return time.monotonic() - began


def stop_all(admin, course: str, names) -> None:
    """Stop the servers at once (a class leaving): each stop request waits for its container."""
    names = list(names)
    with ThreadPoolExecutor(min(len(names), 10)) as pool:
        list(pool.map(lambda name: admin.stop(course, user=name), names))
    for name in names:
        admin.wait_until_stopped(course, user=name, timeout=120)


def inspect(node: Node, container: str, template: str) -> str:
    return node.docker("inspect", "--format", template, container).stdout.strip()


def published_port(node: Node, container: str) -> tuple[int, int]:
    """The server's port in its container, and the port its node publishes it on."""
    ((inner, bindings),) = json.loads(inspect(node, container, "{{json .NetworkSettings.Ports}}")).items()
    return int(inner.split("/")[0]), int(bindings[0]["HostPort"])


def reachable_from(node: Node, host: str, port: int, timeout: float = 20) -> bool:
    """A TCP connection from the node's own namespace (not a student's) opens within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.sh(f"timeout 3 bash -c 'exec 3<>/dev/tcp/{host}/{port}'", check=False, timeout=10).returncode == 0:
            return True
        time.sleep(0.5)
    return False


def reachable_here(host: str, port: int, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=3).close()
            return True
        except OSError:
            time.sleep(0.5)
    return False


def listen_in(node: Node, container: str, port: int = 9000) -> None:
    """A listener the test starts inside a student's container (a student's own web server, say)."""
    node.docker("exec", "-d", container, "sh", "-c", f'exec "$(command -v python3 || command -v python)" -m http.server {port}')


def assert_isolated(lab, cluster: Cluster, placed: dict[str, list[str]], images) -> None:
    """The issue's probes: from a student's container on the first CPU worker, nothing but the hub's port opens."""
    manager, first, second, _ = cluster.nodes
    prober, neighbour = (lab.names.container(name, CROWD_COURSE) for name in placed[first.name][:2])
    remote = lab.names.container(placed[second.name][0], CROWD_COURSE)
    for node, container in ((first, neighbour), (second, remote)):
        listen_in(node, container)
    neighbour_ip = inspect(first, neighbour, "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}")
    remote_ip = inspect(second, remote, "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}")
    server_port, neighbour_port = published_port(first, neighbour)
    _, remote_port = published_port(second, remote)
    # Stand-ins for the stack's services on the manager, where the production stack runs them (a listener each).
    published = [argument for port in STAND_IN_PORTS.values() for argument in ("-p", f"{port}:9000")]
    manager.docker(
        "run", "-d", "--name", f"{cluster.name}-stand-ins", *published, "--entrypoint", "sh", images["hub"],
        "-c", 'exec "$(command -v python3 || command -v python)" -m http.server 9000',
    )  # fmt: skip
    targets = {
        "the hub's API (control)": (lab.gateway, lab.ports.hub),
        "a neighbour's listener on the same node": (neighbour_ip, 9000),
        "a neighbour's server on the same node": (neighbour_ip, server_port),
        "a neighbour's published port on the same node": (first.address, neighbour_port),
        "another node's student, published port": (second.address, remote_port),
        "another node's student, on its node's bridge address": (remote_ip, 9000),
        **{f"{service} on the manager": (manager.address, port) for service, port in STAND_IN_PORTS.items()},
        "the registry on the manager": (manager.address, REGISTRY_PORT),
        **{f"{node.name}'s Docker API": (node.address, ENGINE_PORT) for node in cluster.nodes},
    }
    # Every target answers someone: the listeners in the node's own namespace, the published ports, the stand-ins
    # and the engines this machine; so a refused probe below is the policy, not a missing listener.
    assert reachable_from(first, neighbour_ip, 9000) and reachable_from(second, remote_ip, 9000)
    for name, (host, port) in targets.items():
        if host not in (neighbour_ip, remote_ip, lab.gateway):
            assert reachable_here(host, port), f"{name} ({host}:{port}) does not answer this machine"
    # A published port opens to the hub's address (this machine: the hub and the proxy), to no other machine of the
    # management network (here the manager, from its own namespace).
    assert reachable_here(first.address, neighbour_port)
    assert not reachable_from(manager, first.address, neighbour_port, timeout=6)
    reached = json.loads(first.docker(*probe_arguments(prober, targets)).stdout)
    assert reached.pop("the hub's API (control)") == "open", reached
    assert [name for name, state in reached.items() if state == "open"] == [], reached


def write_course_data(admin, cluster: Cluster, script: str) -> None:
    """The course's instructor starts a server (it goes to the course data node, the first CPU worker), runs ``script``
    in its data folder, and stops it."""
    made = admin.api("POST", "/users", json={"usernames": [TEACHER]})
    assert made.status_code in (201, 409), made.text
    response = admin.start(CROWD_COURSE, user=TEACHER)
    assert response.status_code in (201, 202), response.text
    admin.wait_until_ready(CROWD_COURSE, user=TEACHER, timeout=600)
    first = cluster.nodes[1]
    assert servers_by_node(cluster, [first])[first.name] == [TEACHER]
    first.docker("exec", "-w", "/home/jovyan/data", f"{admin.lab.names.container(TEACHER, CROWD_COURSE)}", "sh", "-c", script)
    stop_all(admin, CROWD_COURSE, [TEACHER])


def course_images(node: Node) -> list[str]:
    """The course images a node's engine holds, by repository and digest."""
    listed = node.docker("images", "--digests", "--format", "{{.Repository}}@{{.Digest}}").stdout.split()
    return sorted(image for image in listed if "/course-" in image)


def assert_runs_by_digest(node: Node, container: str, registry_image: str) -> None:
    """The container runs the recorded digest reference, and the node's image of it carries that digest."""
    assert inspect(node, container, "{{.Config.Image}}") == registry_image
    image_id = inspect(node, container, "{{.Image}}")
    digests = json.loads(node.docker("image", "inspect", "--format", "{{json .RepoDigests}}", image_id).stdout)
    assert registry_image in digests, (node.name, digests)


@pytest.mark.timeout(3600)  # the first run builds the base, the courses, the hub, the registry and the node images
def test_thirty_first_starts_at_once_spread_over_the_cpu_workers_stay_isolated_and_keep_their_work(
    scale_lab, swarm, scale_images, scale_courses, build_settings
):
    cluster, _, registry = swarm
    admin = signed_in_users(scale_lab)("admin")
    _, first, second, gpu_worker = cluster.nodes
    # Publishing pushed each version and recorded it by digest under the nodes' address of the registry; the registry
    # serves exactly that manifest; no worker holds a course image yet.
    recorded = VersionRegistry(build_settings.registry_dir).current_image(CROWD_COURSE)
    crowd_image = scale_courses[CROWD_COURSE].registry_image
    assert crowd_image == recorded.registry_image and crowd_image.startswith(f"{registry.address}/"), crowd_image
    repository, digest = crowd_image.removeprefix(f"{registry.address}/").split("@")
    session = requests.Session()
    session.trust_env = False
    manifest = session.head(
        f"https://{registry.address}/v2/{repository}/manifests/{digest}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        verify=str(registry.ca_path),
        timeout=30,
    )
    assert manifest.status_code == 200 and manifest.headers["Docker-Content-Digest"] == digest, manifest.headers
    assert {node.name: course_images(node) for node in cluster.nodes[1:]} == {node.name: [] for node in cluster.nodes[1:]}
    # The instructor's server goes to the course data node (the first CPU worker): what it writes there is the data.
    write_course_data(admin, cluster, "echo week1 > datasets/week1.csv")
    responses = start_at_once(admin, CROWD_COURSE, CROWD)
    assert {name: response.text for name, response in responses.items() if response.status_code not in (201, 202)} == {}
    seconds = wait_all_ready(admin, CROWD_COURSE, CROWD, timeout=900)
    print(f"\nthirty first starts at once on two workers: every server ready after {seconds:.0f} s")
    # An eighth of a CPU each: sixteen fill a 2-CPU worker. The hub spreads them, fifteen and fifteen; the GPU
    # worker's CPUs stay for GPU servers.
    placed = servers_by_node(cluster)
    assert sorted(len(names) for names in placed.values()) == [15, 15], placed
    assert sorted(name for names in placed.values() for name in names) == sorted(CROWD)
    assert servers_by_node(cluster, [gpu_worker]) == {gpu_worker.name: []}
    # Each worker's engine pulled the version by digest on its first server: every server there runs those bytes.
    for node in (first, second):
        for name in placed[node.name]:
            assert_runs_by_digest(node, scale_lab.names.container(name, CROWD_COURSE), crowd_image)
        assert course_images(node) == [crowd_image]
    assert course_images(gpu_worker) == []
    # The proxy reaches a server on each worker (the server itself answers: it asks for a login, no proxy error).
    for node in (first, second):
        page = requests.get(
            scale_lab.server_url(placed[node.name][0], CROWD_COURSE) + "api/status", allow_redirects=False, timeout=60
        )
        assert page.status_code in (302, 403), (node.name, page.status_code, page.text[:200])
    assert_isolated(scale_lab, cluster, placed, scale_images)
    # Every student reads the instructor's data, on either node, and cannot change it.
    for node in (first, second):
        container = scale_lab.names.container(placed[node.name][-1], CROWD_COURSE)
        assert node.docker("exec", container, "cat", f"{DATA}/week1.csv").stdout == "week1\n"
        assert node.sh(f"docker exec {container} touch {DATA}/mine.csv", check=False, timeout=60).returncode != 0
    # Work follows the student: a file written on the second worker is there when the server starts again, on the
    # node that holds the work (the first worker, equally free, would come first by name).
    keeper = placed[second.name][0]
    container = scale_lab.names.container(keeper, CROWD_COURSE)
    second.docker("exec", container, "sh", "-c", "echo kept > /home/jovyan/work/kept.txt")
    stop_all(admin, CROWD_COURSE, CROWD)
    # The instructor replaces a week's data meanwhile; the second worker's copy follows at its next start.
    write_course_data(admin, cluster, "rm datasets/week1.csv && echo week2 > datasets/week2.csv")
    again = admin.start(CROWD_COURSE, user=keeper)
    assert again.status_code in (201, 202), again.text
    admin.wait_until_ready(CROWD_COURSE, user=keeper, timeout=240)
    assert servers_by_node(cluster)[second.name] == [keeper]
    assert second.docker("exec", container, "cat", "/home/jovyan/work/kept.txt").stdout == "kept\n"
    assert second.docker("exec", container, "ls", DATA).stdout.split() == ["week2.csv"]
    stop_all(admin, CROWD_COURSE, [keeper])


# -- work that follows the student: `teachlab work move` (after the crowd, both CPU workers up and empty) ---------------
# The command runs as an admin runs it on the manager: a subprocess with DOCKER_HOST, DOCKER_TLS_VERIFY and
# DOCKER_CERT_PATH, each worker's engine given with --engine. A lost node is a worker's container stopped (``docker
# stop``), and it comes back with ``docker start``: its dockerd, its swarm membership and its node agent (which mounts
# the work volumes again) restart with it. It leaves both workers up, the student's server stopped.
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


@pytest.mark.timeout(1200)
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
    assert f"{volume}.ext4" not in source.sh(f"ls -A {images}", check=False).stdout.split()  # the crowd's stay
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


@pytest.mark.timeout(1200)
def test_servers_spread_within_reservations_shown_per_node_and_a_lost_node_frees_its_students(scale_lab, swarm):
    cluster, certificates = swarm.cluster, swarm.certificates
    users = signed_in_users(scale_lab)
    _, first_worker, second_worker, gpu_worker = cluster.nodes
    # Four 1-CPU servers fill the two 2-CPU workers, two each.
    for name in STUDENTS[:4]:
        response = users(name).start(COURSE)
        assert response.status_code in (201, 202), response.text
    for name in STUDENTS[:4]:
        users(name).wait_until_ready(COURSE, timeout=240)
    placed = servers_by_node(cluster)
    assert sorted(len(names) for names in placed.values()) == [2, 2], placed
    assert servers_by_node(cluster, [gpu_worker]) == {gpu_worker.name: []}  # a GPU node's CPUs stay for GPU servers
    # The admin's view, `teachlab nodes` on the manager's engine, each worker's engine read with --engine.
    table = teachlab_nodes(scale_lab, cluster, certificates)
    for worker in (first_worker, second_worker):
        assert re.search(rf"^ *{worker.name} +cpu +ready +2 +2 of 2 +2\.0 of [\d.]+ GiB +- +- *$", table, re.M), table
    assert re.search(rf"^ *{gpu_worker.name} +gpu +ready +0 +0 of 2 +0\.0 of [\d.]+ GiB +- +0, 1, 2, 3 *$", table, re.M), table
    assert re.search(rf"^ *{cluster.nodes[0].name} +cpu +down or drained +0 ", table, re.M), table
    # Each server answers through the proxy, over its node's published port, and reached the hub (it signed in).
    page = users("alice").get_server_page("api/status", course=COURSE)
    assert page.status_code == 200, page.text[:300]
    # The fifth is refused at once, with the reason.
    began = time.monotonic()
    refused = users(STUDENTS[4]).start(COURSE)
    assert refused.status_code == 503, refused.text
    assert "no cpu node has 1 CPU free for intro-python: most free is 0 CPUs on" in refused.json()["message"]
    assert time.monotonic() - began < 5
    # One student on the second worker stops: a place is free there.
    leaving = placed[second_worker.name][0]
    users(leaving).stop(COURSE)
    users(leaving).wait_until_stopped(COURSE, timeout=60)
    # The first worker is switched off: its two servers are stopped in the hub within one poll.
    lost = placed[first_worker.name]
    first_worker.container.stop(timeout=0)
    switched_off = time.monotonic()
    for name in lost:
        users(name).wait_until_stopped(COURSE, timeout=POLL_SECONDS + ENGINE_TIMEOUT_SECONDS + 5)
    print(f"\nthe hub found the lost node's servers stopped after {time.monotonic() - switched_off:.1f} s")
    # The first of them starts again on the remaining worker; the second is told at once that nothing is free.
    again = users(lost[0]).start(COURSE)
    assert again.status_code in (201, 202), again.text
    users(lost[0]).wait_until_ready(COURSE, timeout=240)
    assert lost[0] in servers_by_node(cluster)[second_worker.name]
    full = users(lost[1]).start(COURSE)
    assert full.status_code == 503 and "most free is 0 CPUs on" in full.json()["message"], full.text


@pytest.mark.timeout(900)
def test_fifty_gpu_starts_at_once_get_four_devices_a_new_hub_frees_a_stale_holding_and_a_lost_node_frees_all(scale_lab, swarm):
    cluster = swarm.cluster
    admin = signed_in_users(scale_lab)("admin")
    gpu_worker = cluster.nodes[3]
    responses = start_at_once(admin, GPU_COURSE, GPU_STUDENTS)
    started = sorted(name for name, response in responses.items() if response.status_code in (201, 202))
    refused = [response for name, response in responses.items() if name not in started]
    assert len(started) == 4 and len(refused) == 46, {name: response.status_code for name, response in responses.items()}
    reason = f"no gpu node has 1 GPU free for {GPU_COURSE}: most free is 0 GPUs on {gpu_worker.name}"
    assert {(response.status_code, response.json()["message"]) for response in refused} == {(503, reason)}
    slowest = max(response.elapsed.total_seconds() for response in refused)
    print(f"\nfifty GPU starts at once: the slowest of the 46 refusals answered in {slowest:.1f} s")
    assert slowest < 15  # the reason at once, not a pending task until a timeout
    wait_all_ready(admin, GPU_COURSE, started, timeout=600)
    ledger = GpuLedger.open(scale_lab.hub_settings().ledger_url)
    holdings = {h.username: (h.node, h.device_uuid) for h in ledger.holdings()}
    assert sorted(holdings) == started and {node for node, _ in holdings.values()} == {gpu_worker.name}
    assert len({device for _, device in holdings.values()}) == 4  # no device twice
    # Each container asked its node's engine for exactly its ledger device.
    for name, (_, device) in holdings.items():
        container = scale_lab.names.container(name, GPU_COURSE)
        requested = gpu_worker.docker("inspect", "--format", "{{json .HostConfig.DeviceRequests}}", container).stdout
        assert json.loads(requested)[0]["DeviceIDs"] == [device], requested
    # A holding whose start died with the hub (stand-in: written straight into the ledger, for a student who has no
    # server): the next hub process reconciles the GPU node before its first GPU placement, so the device goes to
    # the next student instead of staying held.
    leaving, newcomer = started[0], min(set(GPU_STUDENTS) - set(started))
    admin.stop(GPU_COURSE, user=leaving)
    admin.wait_until_stopped(GPU_COURSE, user=leaving, timeout=60)
    freed = holdings[leaving][1]
    ledger.allocate(
        username="gpu-gail",
        course=GPU_COURSE,
        server_name=GPU_COURSE,
        count=1,
        devices=[GpuDevice(uuid=freed, index=int(freed), model="stand-in GPU", memory_bytes=16 * 2**30)],
        term_start=date(2026, 9, 1),
        term_end=date(2027, 8, 31),
        node=gpu_worker.name,
    )
    scale_lab.hub.stop(signal.SIGKILL)
    scale_lab.start_hub()
    response = admin.start(GPU_COURSE, user=newcomer)
    assert response.status_code in (201, 202), response.text  # refused, "0 GPUs free", without the reconciliation
    admin.wait_until_ready(GPU_COURSE, user=newcomer, timeout=240)
    holdings = {h.username: (h.node, h.device_uuid) for h in ledger.holdings()}
    assert holdings[newcomer] == (gpu_worker.name, freed) and "gpu-gail" not in holdings
    running = sorted(holdings)
    assert len(running) == 4
    gpu_worker.container.stop(timeout=0)
    switched_off = time.monotonic()
    for name in running:
        admin.wait_until_stopped(GPU_COURSE, user=name, timeout=POLL_SECONDS + ENGINE_TIMEOUT_SECONDS + 5)
    print(f"\nthe hub found the GPU node's servers stopped after {time.monotonic() - switched_off:.1f} s")
    assert ledger.holdings() == []  # their GPUs are free again in the ledger
    again = admin.start(GPU_COURSE, user=newcomer)
    assert again.status_code == 503, again.text
    assert again.json()["message"] == f"no gpu node is up for {GPU_COURSE} ({gpu_worker.name} down); try again later"
