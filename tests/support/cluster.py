"""Swarms of Docker-in-Docker nodes for the cluster tests: each node is a container on this machine's engine that
runs its own dockerd (Debian's docker.io), so a test deploys, kills and restores a whole production lab without
touching this machine's own engine state (no ``docker swarm init`` here, ever).

* ``node_image``: the node image, built from the platform's offline root filesystem (``tests/support/dind/``).
* ``Cluster``: N nodes on a network of their own; ``init_swarm`` makes node 0 a manager and joins the others
  (as workers or managers); ``load_images`` copies images in with ``docker save | docker load``, saving once
  and loading into every node at the same time.
* ``Node``: run a shell script in a node, copy files in and out, its own ``docker``.
* ``engine_tls``: the product's ``NodeCertificates`` (spawner/deploy/certificates.py) in a folder of the test's: a
  certificate per node's engine (for its address) and the hub's client one: the nodes' engines on TCP with mutual TLS.

Each node runs with the flags Docker-in-Docker needs on this machine (``--privileged`` is refused here: no
CAP_SYS_RESOURCE), a volume of its own at /var/lib/docker, and permission for loop devices (the node agent
mounts students' sized work volumes on them). Everything carries the session's labels; ``remove`` takes it away.
"""

from __future__ import annotations

import hashlib
import shlex
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import jinja2

from spawner.deploy.certificates import ENGINE_TLS_DIR, NodeCertificates
from spawner.engine.build import build_image, tar_context

DIND_DIR = Path(__file__).with_name("dind")
FAKE_GPU_HOOK = Path(__file__).resolve().parents[1] / "fake_gpu_runtime" / "nvidia-container-runtime-hook"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
HOST_PIP_CONF = Path("/etc/pip.conf")
NODE_FLAGS = {
    "cap_add": ["ALL"],
    "cap_drop": ["SYS_RESOURCE"],
    "security_opt": ["seccomp=unconfined", "apparmor=unconfined"],
    "tmpfs": {"/run": ""},
    "device_cgroup_rules": ["b 7:* rmw", "c 10:237 rmw"],  # loop devices and /dev/loop-control
}
DOCKERD_READY_TIMEOUT = 90
ENGINE_PORT = 2376


def node_image(client: docker.DockerClient, rootfs: str, namespace: str, labels: Mapping[str, str], log_dir: Path) -> str:
    """The node image (cached between sessions by the digest of its context)."""
    dockerfile = jinja2.Template((DIND_DIR / "Dockerfile.j2").read_text()).render(rootfs=rootfs)
    files = {
        "Dockerfile": dockerfile,
        "teachlab-node.sh": (DIND_DIR / "teachlab-node.sh").read_bytes(),
        "nvidia-container-runtime-hook.sh": FAKE_GPU_HOOK.read_bytes(),  # .sh: tar_context keeps it executable
        "ca-certificates.crt": HOST_CA_BUNDLE.read_bytes(),
        "pip.conf": HOST_PIP_CONF.read_bytes() if HOST_PIP_CONF.exists() else b"",
    }
    digest = hashlib.sha256()
    for name in sorted(files):
        data = files[name].encode() if isinstance(files[name], str) else files[name]
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    reference = f"{namespace}/dind-node:{digest.hexdigest()[:12]}"
    try:
        client.images.get(reference)
    except docker.errors.ImageNotFound:
        build_image(client, context=tar_context(files), tag=reference, labels=dict(labels), log_path=log_dir / "dind-node.log")
    return reference


@dataclass
class Node:
    """One Docker-in-Docker node."""

    container: docker.models.containers.Container
    network: str

    @property
    def name(self) -> str:
        return self.container.name

    @property
    def address(self) -> str:
        self.container.reload()
        return self.container.attrs["NetworkSettings"]["Networks"][self.network]["IPAddress"]

    def sh(self, script: str, *, timeout: float = 600, check: bool = True, env: Mapping[str, str] | None = None, stdin=None):
        """Run ``script`` with bash in the node (as root); CompletedProcess with text output."""
        command = ["docker", "exec", "-i"]
        for key, value in (env or {}).items():
            command += ["-e", f"{key}={value}"]
        command += [self.name, "bash", "-c", script]
        text = not isinstance(stdin, bytes)
        result = subprocess.run(
            command, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout, text=text, check=False
        )
        if check and result.returncode != 0:
            output = result.stdout if isinstance(result.stdout, str) else result.stdout.decode(errors="replace")
            raise AssertionError(f"in {self.name}: `{script[:200]}` exited {result.returncode}:\n{output[-4000:]}")
        return result

    def docker(self, *arguments: str, timeout: float = 300, check: bool = True):
        return self.sh(shlex.join(["docker", *arguments]), timeout=timeout, check=check)

    def write_file(self, path: str, data: bytes | str, mode: int = 0o644) -> None:
        data = data.encode() if isinstance(data, str) else data
        self.sh(
            f"mkdir -p {shlex.quote(str(Path(path).parent))} && cat > {shlex.quote(path)} && chmod {mode:o} {shlex.quote(path)}",
            stdin=data,
        )

    def read_file(self, path: str) -> bytes:
        return subprocess.run(["docker", "exec", self.name, "cat", path], capture_output=True, check=True, timeout=120).stdout

    def copy_in(self, source: Path, target: str) -> None:
        subprocess.run(["docker", "cp", str(source), f"{self.name}:{target}"], check=True, capture_output=True, timeout=600)

    def wait_for_dockerd(self, timeout: float = DOCKERD_READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sh("docker info >/dev/null 2>&1", check=False, timeout=30).returncode == 0:
                return
            time.sleep(0.5)
        logs = self.container.logs(tail=30).decode(errors="replace")
        raise AssertionError(f"dockerd in {self.name} did not answer within {timeout:.0f} s:\n{logs}")


def ensure_network(client: docker.DockerClient, name: str, labels: Mapping[str, str]) -> str:
    """A bridge network for nodes (and a test's own listeners on its gateway); several clusters may share one."""
    try:
        client.networks.get(name)
    except docker.errors.NotFound:
        client.networks.create(name, driver="bridge", labels=dict(labels))
    return name


def network_gateway(client: docker.DockerClient, name: str) -> str:
    """This machine's address on a network the test made (where the test's own listeners reach the nodes)."""
    return client.networks.get(name).attrs["IPAM"]["Config"][0]["Gateway"]


@dataclass
class Cluster:
    """``count`` nodes named ``<name>-<i>`` on the network ``network`` (``<name>`` when not given)."""

    client: docker.DockerClient
    name: str
    image: str
    labels: Mapping[str, str]
    count: int = 1
    network: str = ""
    nodes: list[Node] = field(default_factory=list)
    engine_tls: NodeCertificates | None = None  # the nodes' engines also listen on TCP with mutual TLS
    # Ports of node 0 published on this machine's loopback: this engine's route to a service the test runs there
    # (Docker trusts a registry on 127.0.0.0/8 without a certificate, so this engine pushes to the swarm's through it).
    first_node_loopback_ports: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self.network = self.network or self.name
        self._owns_network = False

    def start(self) -> Cluster:
        try:
            self.client.networks.get(self.network)
        except docker.errors.NotFound:
            ensure_network(self.client, self.network, self.labels)
            self._owns_network = True
        for index in range(self.count):
            self.add_node(index)
        for node in self.nodes:
            if self.engine_tls is not None:
                certificate, key = self.engine_tls.server_certificate(node.address)
                node.write_file(f"{ENGINE_TLS_DIR}/ca.crt", self.engine_tls.ca_path.read_bytes())
                node.write_file(f"{ENGINE_TLS_DIR}/server.crt", certificate)
                node.write_file(f"{ENGINE_TLS_DIR}/server.key.new", key, mode=0o600)
                node.sh(f"mv {ENGINE_TLS_DIR}/server.key.new {ENGINE_TLS_DIR}/server.key")  # dockerd waits for this one
            node.wait_for_dockerd()
        return self

    def loopback_port(self, port: int) -> int:
        """The port of this machine's loopback where node 0's ``port`` is published (``first_node_loopback_ports``)."""
        self.nodes[0].container.reload()
        return int(self.nodes[0].container.attrs["NetworkSettings"]["Ports"][f"{port}/tcp"][0]["HostPort"])

    def engine_url(self, node: Node) -> str:
        return f"tcp://{node.address}:{ENGINE_PORT}"

    def add_node(self, index: int | None = None, *, engine_tls: bool | None = None) -> Node:
        """Node ``index`` (the next one unless told); ``engine_tls`` (default: the cluster's) makes its dockerd wait
        for its certificate and listen on TCP with mutual TLS."""
        index = len(self.nodes) if index is None else index
        if engine_tls is None:
            engine_tls = self.engine_tls is not None
        name = f"{self.name}-{index}"
        volume = self.client.volumes.create(f"{name}-docker", labels=dict(self.labels))
        published = {f"{port}/tcp": ("127.0.0.1", None) for port in self.first_node_loopback_ports} if index == 0 else {}
        container = self.client.containers.run(
            self.image,
            name=name,
            hostname=name,
            detach=True,
            network=self.network,
            labels=dict(self.labels),
            environment={"TEACHLAB_NODE_ENGINE_TLS": "1"} if engine_tls else {},
            **({"ports": published} if published else {}),
            volumes={
                volume.name: {"bind": "/var/lib/docker", "mode": "rw"},
                "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
            },
            **NODE_FLAGS,
        )
        node = Node(container, self.network)
        self.nodes.append(node)
        return node

    @property
    def gateway(self) -> str:
        return network_gateway(self.client, self.network)

    def init_swarm(self, managers: int = 1) -> None:
        """Node 0 creates the swarm; the next ``managers - 1`` nodes join as managers, the rest as workers."""
        first = self.nodes[0]
        first.docker("swarm", "init", "--advertise-addr", first.address)
        tokens = {role: first.docker("swarm", "join-token", "-q", role).stdout.strip() for role in ("manager", "worker")}
        for index, node in enumerate(self.nodes[1:], start=1):
            role = "manager" if index < managers else "worker"
            node.docker("swarm", "join", "--token", tokens[role], f"{first.address}:2377")

    def load_images(self, references: Sequence[str], nodes: Iterable[Node] | None = None) -> float:
        """Copy images into nodes: one ``docker save`` streamed into every node's ``docker load`` at once.
        Returns the seconds it took."""
        targets = list(nodes if nodes is not None else self.nodes)
        started = time.monotonic()
        save = subprocess.Popen(["docker", "save", *references], stdout=subprocess.PIPE)
        loads = [
            subprocess.Popen(
                ["docker", "exec", "-i", node.name, "docker", "load", "-q"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            for node in targets
        ]
        failures: list[str] = []

        def feed() -> None:
            try:
                while block := save.stdout.read(1 << 20):
                    for load in loads:
                        load.stdin.write(block)
            finally:
                for load in loads:
                    load.stdin.close()

        feeder = threading.Thread(target=feed)
        feeder.start()
        feeder.join()
        if save.wait() != 0:
            failures.append("docker save failed")
        for node, load in zip(targets, loads, strict=True):
            output = load.stdout.read().decode(errors="replace")
            if load.wait() != 0:
                failures.append(f"docker load in {node.name} failed: {output[-300:]}")
        if failures:
            raise AssertionError("; ".join(failures))
        return time.monotonic() - started

    def remove(self) -> None:
        """Take every node away (their engines, containers, mounts and loop devices go with them), then the network."""
        for node in self.nodes:
            node.sh("umount -R /srv/teachlab/state/volumes/mounts/* 2>/dev/null; true", check=False, timeout=60)
            try:
                node.container.remove(force=True, v=False)
            except docker.errors.NotFound:
                pass
            try:
                self.client.volumes.get(f"{node.name}-docker").remove(force=True)
            except docker.errors.NotFound:
                pass
        self.nodes = []
        if self._owns_network:
            try:
                self.client.networks.get(self.network).remove()
            except docker.errors.NotFound:
                pass
