"""The egress policy of the students' network, installed by the hub at start (spawner/node/firewall.py).

Every target here is a listener this test starts: a port on the gateway address, addresses on a dummy interface
the test adds (the link-local metadata address, a private address), a container on a network the test makes,
and a "public" address in a network namespace the test makes (198.51.100.0/24, a documentation range, behind a
veth pair). Nothing outside this machine is ever contacted. A blocked connection is a dropped packet: the probe
times out (a refused port would mean the target answered).
"""

from __future__ import annotations

import socket
import subprocess
import threading
import uuid
from contextlib import contextmanager

import pytest

pytestmark = [
    pytest.mark.hub,
    pytest.mark.docker,
    pytest.mark.usefixtures("print_container_logs_on_failure", "hub_log_on_failure"),
]

PROBE = (
    "import socket, sys\n"
    "def reach(host, port):\n"
    "    try:\n"
    "        socket.create_connection((host, port), timeout=3).close(); return 'open'\n"
    "    except socket.timeout:\n"
    "        return 'timeout'\n"
    "    except OSError as e:\n"
    "        return type(e).__name__\n"
    "print(' '.join(reach(t.rsplit(':', 1)[0], int(t.rsplit(':', 1)[1])) for t in sys.argv[1:]))\n"
)


def probe(container, *targets: str) -> list[str]:
    result = container.exec_run(["python", "-c", PROBE, *targets], user="1000:1000")
    return result.output.decode().split()


@contextmanager
def listener(address: str, port: int = 0):
    """A TCP listener on this machine that accepts and closes connections; yields its port."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((address, port))
    server.listen(16)
    server.settimeout(0.5)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                connection, _ = server.accept()
                connection.close()
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        server.close()


def ip(*arguments: str) -> None:
    subprocess.run(["ip", *arguments], check=True, capture_output=True, timeout=30)


@pytest.fixture
def local_addresses():
    """An interface of the test's own (a veth pair: this kernel has no dummy interfaces) carrying the metadata
    address and a private address, both addresses of this machine."""
    name = f"tl{uuid.uuid4().hex[:8]}"
    ip("link", "add", name, "type", "veth", "peer", "name", f"{name}p")
    try:
        ip("addr", "add", "169.254.169.254/32", "dev", name)
        ip("addr", "add", "10.213.7.1/32", "dev", name)
        ip("link", "set", name, "up")
        yield name
    finally:
        ip("link", "del", name)


@pytest.fixture
def public_namespace():
    """A network namespace standing in for a host on the public internet (198.51.100.2), behind a veth pair."""
    suffix = uuid.uuid4().hex[:6]
    namespace, host_end, far_end = f"tl-pub-{suffix}", f"tlh{suffix}", f"tlp{suffix}"
    ip("netns", "add", namespace)
    try:
        ip("link", "add", host_end, "type", "veth", "peer", "name", far_end)
        ip("link", "set", far_end, "netns", namespace)
        ip("addr", "add", "198.51.100.1/30", "dev", host_end)
        ip("link", "set", host_end, "up")
        ip("-n", namespace, "addr", "add", "198.51.100.2/30", "dev", far_end)
        ip("-n", namespace, "link", "set", far_end, "up")
        server = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                namespace,
                "python3",
                "-c",
                "import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
                "s.bind(('198.51.100.2',8080));s.listen(16)\nwhile True:\n c,_=s.accept();c.close()",
            ]
        )
        try:
            yield "198.51.100.2:8080"
        finally:
            server.kill()
            server.wait()
    finally:
        subprocess.run(["ip", "link", "del", host_end], capture_output=True, timeout=30)
        ip("netns", "del", namespace)


def _container(docker_client, lab, user, course):
    return docker_client.containers.get(lab.names.container(user, course))


def test_a_student_reaches_the_hub_and_nothing_else_of_the_node(users, lab, docker_client, local_addresses):
    alice = users("alice")
    alice.start_and_wait("intro-python")
    container = _container(docker_client, lab, "alice", "intro-python")
    with listener(lab.gateway) as other_port, listener("169.254.169.254") as metadata, listener("10.213.7.1") as private:
        answers = probe(
            container,
            f"{lab.gateway}:{lab.ports.hub}",
            f"{lab.gateway}:{other_port}",
            f"169.254.169.254:{metadata}",
            f"10.213.7.1:{private}",
        )
    assert answers == ["open", "timeout", "timeout", "timeout"]


def test_a_student_cannot_reach_a_container_on_another_network(users, docker_client, base_image, session_labels, session_id, lab):
    bob = users("bob")
    bob.start_and_wait("intro-python")
    network = docker_client.networks.create(f"teachlab-test-other-{session_id}", driver="bridge", labels=session_labels)
    target = docker_client.containers.run(
        base_image,
        ["/opt/jupyter/bin/python", "-m", "http.server", "8000"],
        detach=True,
        network=network.name,
        labels=session_labels,
    )
    try:
        target.reload()
        address = target.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"]
        assert probe(_container(docker_client, lab, "bob", "intro-python"), f"{address}:8000") == ["timeout"]
    finally:
        target.remove(force=True)
        network.remove()


def test_the_public_internet_is_open_by_default_and_off_per_course(users, docker_client, public_namespace, lab):
    carol = users("carol")
    carol.start_and_wait("intro-python")
    carol.start_and_wait("offline-course")
    assert probe(_container(docker_client, lab, "carol", "intro-python"), public_namespace) == ["open"]
    assert probe(_container(docker_client, lab, "carol", "offline-course"), public_namespace) == ["timeout"]
    # The offline server still reaches the hub (it is a working JupyterLab), and the hub reaches it.
    assert carol.get_server_page("api/status", course="offline-course").status_code == 200
    carol.stop("offline-course")
