"""A swarm of Docker-in-Docker nodes and a test lab whose hub places servers on it (issue 14), shared by
tests/cluster/test_scale_out.py and bench/cluster_spawn.py.

The swarm: one manager (drained: it runs no student's server), two CPU workers and a GPU worker with four fake
GPUs (the stand-in nvidia-container-runtime-hook of tests/fake_gpu_runtime is on each node's PATH, so device
requests start and the container sees exactly its devices); each node's dockerd also listens on TCP 2376 with
mutual TLS (certificates of the product's node CA, ``NodeCertificates``, made in a folder of the test's). The
stack's registry (its image from ``StackImageBuilder.build_registry``) runs on the manager with a certificate of the same CA, which every node trusts
(``/etc/docker/certs.d/<manager>:5000/ca.crt``); the courses are published with it (``publish_scale_courses``): each
version is pushed and recorded by digest, and a worker's engine pulls it on its first server of that version. The
lab: the test lab's provider, proxy and hub run on this machine with ``swarm_placement`` on. Stand-ins, named: the
nodes are containers (each reports this machine's 2 CPUs); the hub's image (the node agent) and the registry's reach
the nodes by ``docker save | docker load``; this machine's engine pushes through the manager's port 5000 published on
its loopback (Docker trusts a registry on 127.0.0.0/8 without a certificate; this machine's /etc/docker stays as it is).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import docker
import requests

from spawner.catalog import load_catalog
from spawner.core.contract import Labels
from spawner.deploy.certificates import NodeCertificates
from spawner.deploy.images import StackImageBuilder
from spawner.devlab.lab import Lab
from spawner.devlab.names import names_on_loopback
from spawner.images.publish import PublishResult, publish_course
from spawner.images.settings import BuildSettings
from support.accounts import CROWD_STUDENTS, GPU_STUDENTS
from support.catalogs import copy_course
from support.cluster import Cluster, network_gateway, node_image
from support.lab_fixtures import TEST_DOMAIN, start_test_lab, stop_test_lab
from support.production import CACHE_LABEL

COURSE = "intro-python"  # 1 CPU and 1 GiB per server: two fill a node that has 2 CPUs
GPU_COURSE = "gpu-course"  # intro-python's environment, one GPU and half a CPU: four fill the GPU worker
CROWD_COURSE = "crowd-course"  # an eighth of a CPU: sixteen fill a CPU worker
CROWD = CROWD_STUDENTS[:30]
GPU_IDS = ("0", "1", "2", "3")
ENGINE_TIMEOUT_SECONDS = 4
REGISTRY_PORT = 5000
REGISTRY_TLS_DIR = "/etc/teachlab-registry"
REGISTRY_READY_TIMEOUT = 60


def make_scale_catalog(catalog: Path, repo_root: Path, crowd: Sequence[str] = CROWD) -> Path:
    """intro-python, gpu-course and crowd-course (its students: ``crowd``; the benchmark lists its own)."""
    copy_course(repo_root, COURSE, catalog)
    copy_course(
        repo_root,
        COURSE,
        catalog,
        new_slug=GPU_COURSE,
        title="GPU Course",
        gpu=1,
        resources={"cpu": 0.5, "memory": "1G"},
        students={"users": list(GPU_STUDENTS), "groups": ["gpu-testers"]},
    )
    copy_course(
        repo_root,
        COURSE,
        catalog,
        new_slug=CROWD_COURSE,
        title="Crowd",
        resources={"cpu": 0.125, "memory": "384M"},
        students={"users": list(crowd)},
    )
    return catalog


def build_scale_images(client: docker.DockerClient, settings: BuildSettings) -> dict[str, str]:
    """The hub's image (the node agent), the registry's and the node image, built here once (kept between sessions).
    The courses are published once the swarm's registry runs (``publish_scale_courses``)."""
    settings = replace(settings, labels=CACHE_LABEL)
    builder = StackImageBuilder(settings, client)
    images = {"hub": builder.build(names=["hub"]).hub, "registry": builder.build_registry()}
    images["node"] = node_image(client, builder.rootfs(build=False), settings.image_namespace, CACHE_LABEL, settings.log_dir)
    return images


@dataclass(frozen=True)
class SwarmRegistry:
    """The stack's registry on the manager: ``address`` as the nodes reach it (it names the recorded images),
    ``push_address`` as this machine's engine reaches it (the manager's port on this machine's loopback)."""

    address: str
    push_address: str
    ca_path: Path


class ScaleSwarm(NamedTuple):
    cluster: Cluster
    certificates: NodeCertificates
    registry: SwarmRegistry


def start_registry(cluster: Cluster, certificates: NodeCertificates, image: str) -> SwarmRegistry:
    """The registry's image run on the manager as the stack would: TLS with a certificate for the manager's address
    (the test's CA), images on a volume; every node trusts the CA for that address. Returns once it answers."""
    manager = cluster.nodes[0]
    address = f"{manager.address}:{REGISTRY_PORT}"
    certificate, key = certificates.server_certificate(manager.address)
    manager.write_file(f"{REGISTRY_TLS_DIR}/registry.crt", certificate)
    manager.write_file(f"{REGISTRY_TLS_DIR}/registry.key", key, mode=0o600)
    for node in cluster.nodes:
        node.write_file(f"/etc/docker/certs.d/{address}/ca.crt", certificates.ca_path.read_bytes())
    secrets = "/run/secrets/teachlab-registry"
    manager.docker(
        "run", "-d", "--name", "teachlab-registry", "--restart", "no", "-p", f"{REGISTRY_PORT}:5000",
        "-v", "teachlab-registry:/var/lib/docker-registry", "-v", f"{REGISTRY_TLS_DIR}:{secrets}:ro",
        "-e", f"TEACHLAB_REGISTRY_CERTIFICATE={secrets}/registry.crt", "-e", f"TEACHLAB_REGISTRY_KEY={secrets}/registry.key",
        image,
    )  # fmt: skip
    session = requests.Session()
    session.trust_env = False  # no proxy, and the test's CA rather than REQUESTS_CA_BUNDLE
    deadline = time.monotonic() + REGISTRY_READY_TIMEOUT
    while True:
        try:
            if session.get(f"https://{address}/v2/", verify=str(certificates.ca_path), timeout=3).status_code == 200:
                break
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            logs = manager.docker("logs", "--tail", "30", "teachlab-registry", check=False).stdout
            raise AssertionError(f"the registry on {manager.name} did not answer at {address}:\n{logs}")
        time.sleep(0.5)
    return SwarmRegistry(address, f"127.0.0.1:{cluster.loopback_port(REGISTRY_PORT)}", certificates.ca_path)


def publish_scale_courses(
    client: docker.DockerClient, settings: BuildSettings, catalog: Path, registry: SwarmRegistry
) -> dict[str, PublishResult]:
    """Every course of ``catalog`` published with the swarm's registry: pushed, and recorded by digest."""
    settings = replace(
        settings, labels=CACHE_LABEL, registry_address=registry.address, registry_push_address=registry.push_address
    )
    courses = load_catalog(catalog).courses
    return {slug: publish_course(courses[slug], settings=settings, client=client) for slug in courses}


@contextmanager
def running_swarm(
    client: docker.DockerClient, name: str, images: Mapping[str, str], labels: Mapping[str, str], tls_dir: Path
) -> Iterator[ScaleSwarm]:
    """Manager, two CPU workers and a GPU worker, the hub's and the registry's images loaded into every node, the
    registry running on the manager; removed afterwards."""
    certificates = NodeCertificates(tls_dir).ensure()
    cluster = Cluster(
        client, name, images["node"], labels, count=4, engine_tls=certificates, first_node_loopback_ports=(REGISTRY_PORT,)
    )
    try:
        cluster.start()
        cluster.init_swarm()
        manager, *workers = cluster.nodes
        manager.docker("node", "update", "--availability", "drain", manager.name)
        for worker in workers[:2]:
            manager.docker("node", "update", "--label-add", f"{Labels.NODE_ROLE}=cpu", worker.name)
        gpu_worker = workers[2]
        manager.docker("node", "update", "--label-add", f"{Labels.NODE_ROLE}=gpu", gpu_worker.name)
        manager.docker("node", "update", "--label-add", f"{Labels.NODE_GPUS}={','.join(GPU_IDS)}", gpu_worker.name)
        # The node agent on the workers; the registry and the probes' listeners (the hub's image) on the manager.
        seconds = cluster.load_images([images["hub"], images["registry"]], cluster.nodes)
        print(f"\nimages loaded into the nodes in {seconds:.0f} s")
        yield ScaleSwarm(cluster, certificates, start_registry(cluster, certificates, images["registry"]))
    finally:
        cluster.remove()


@contextmanager
def swarm_lab(
    client: docker.DockerClient,
    *,
    state_dir: Path,
    image_namespace: str,
    catalog: Path,
    images: Mapping[str, str],
    swarm: ScaleSwarm,
    session_id: str,
    labels: Mapping[str, str],
    site_dir: Path,
) -> Iterator[Lab]:
    """The test lab, placing its servers on the swarm's workers; requests trust its CA meanwhile."""
    cluster, certificates, _ = swarm
    settings = {
        "swarm_placement": True,
        "client_kwargs": {"base_url": cluster.engine_url(cluster.nodes[0]), "max_pool_size": 8},
        "tls_config": certificates.hub_tls,
        "node_engine_tls": certificates.hub_tls,
        "node_engine_timeout": ENGINE_TIMEOUT_SECONDS,
        "hub_address": network_gateway(client, cluster.network),
        "node_agent_image": images["hub"],
        "course_data_node": cluster.nodes[1].name,  # the first CPU worker holds the courses' data as instructors write it
        "extra_labels": dict(labels),
    }
    lines = [f"c.CourseSpawner.{key} = {value!r}" for key, value in settings.items()]
    # Servers on other nodes reach the hub through their node's forward to this machine's address on the nodes'
    # network: the hub listens there too, and tells servers the students' gateway, the same on every node.
    lines += [
        "from spawner.hub.settings import HubSettings",
        "from spawner.hub.startup import HubHost",
        "_settings = HubSettings.from_environment()",
        "_net = HubHost().student_network(_settings.network, _settings.extra_labels, _settings.hub_port)",
        'c.JupyterHub.hub_connect_url = f"http://{_net.gateway}:{_settings.hub_port}"',
        'c.JupyterHub.hub_bind_url = f"http://0.0.0.0:{_settings.hub_port}"',
    ]
    (site_dir / "50-swarm.py").write_text("\n".join(lines) + "\n")
    with names_on_loopback(TEST_DOMAIN):
        lab = start_test_lab(
            state_dir=state_dir,  # where the courses were published
            catalog=catalog,
            network=f"tl-scale-students-{session_id}",
            labels=labels,
            site_config_dir=site_dir,
            name_prefix=f"tls{session_id}",
            image_namespace=image_namespace,
        )
        previous = os.environ.get("REQUESTS_CA_BUNDLE")
        os.environ["REQUESTS_CA_BUNDLE"] = str(lab.certificates.ca_certificate)
        try:
            yield lab
        finally:
            print(f"\n===== hub log =====\n{lab.hub.tail(120)}")
            if previous is None:
                os.environ.pop("REQUESTS_CA_BUNDLE", None)
            else:
                os.environ["REQUESTS_CA_BUNDLE"] = previous
            stop_test_lab(lab, client, labels)


def servers_by_node(cluster: Cluster, nodes=None) -> dict[str, list[str]]:
    """Student servers running on each worker (the CPU workers unless told), read from the workers' own engines."""
    placed = {}
    for node in nodes or cluster.nodes[1:3]:
        result = node.sh(
            f"docker ps --filter label={Labels.USER} --format '{{{{.Label \"{Labels.USER}\"}}}}'", check=False, timeout=60
        )
        placed[node.name] = sorted(result.stdout.split()) if result.returncode == 0 else []
    return placed


def admin_cli_environment(cluster: Cluster, certificates: NodeCertificates) -> dict[str, str]:
    """The environment of ``teachlab`` as an admin runs it on the manager: its engine over TLS with the hub's client
    certificate (docker's own file names in DOCKER_CERT_PATH), which the workers' engines take too."""
    cert_path = certificates.docker_cli_folder
    env = {key: value for key, value in os.environ.items() if key != "REQUESTS_CA_BUNDLE"}
    env |= {"DOCKER_HOST": cluster.engine_url(cluster.nodes[0]), "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(cert_path)}
    return env | {"COLUMNS": "200"}
