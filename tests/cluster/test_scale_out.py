"""Students' servers across the nodes of a swarm (issue 14): the real hub places them, each node's engine runs them.

The swarm: Docker-in-Docker nodes on this machine (tests/support/cluster.py), one manager, two CPU workers and a
GPU worker with four fake GPUs (the stand-in nvidia-container-runtime-hook of tests/fake_gpu_runtime is on each
node's PATH, so device requests start and the container sees exactly its devices), each node's dockerd also on TCP 2376 with mutual TLS (certificates of a CA the test makes, the stand-in for the
stack's). The lab: the test lab's provider, proxy and hub run on this machine (tests/support/lab_fixtures.py) with
``swarm_placement`` on: the hub reads the swarm from the manager's engine and creates each server on a worker's
engine; servers call the hub through their node's forward, the proxy reaches them on the port published on their
node's address. Stand-ins, named: the nodes are containers (they report this machine's 2 CPUs each, so two 1-CPU
servers fill a worker); images reach the nodes by ``docker save | docker load`` (the stack's registry is not built).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from spawner.catalog import load_catalog
from spawner.core.contract import Labels
from spawner.deploy.images import StackImageBuilder
from spawner.devlab.names import names_on_loopback
from spawner.gpu.ledger import GpuLedger
from spawner.images.publish import publish_course
from support.catalogs import copy_course
from support.cluster import Cluster, EngineCertificates, network_gateway, node_image
from support.hub import signed_in_users
from support.lab_fixtures import TEST_DOMAIN, start_test_lab, stop_test_lab
from support.production import CACHE_LABEL

pytestmark = [pytest.mark.cluster, pytest.mark.docker, pytest.mark.hub]

COURSE = "intro-python"  # 1 CPU and 1 GiB per server: two fill a node that has 2 CPUs
GPU_COURSE = "gpu-course"  # intro-python's environment, one GPU
GPU_STUDENTS = ("gpu-gail", "quinn")
GPU_IDS = ("0", "1", "2", "3")
STUDENTS = ("alice", "bob", "carol", "dave", "erin")
POLL_SECONDS = 5
ENGINE_TIMEOUT_SECONDS = 4


@pytest.fixture(scope="module")
def scale_catalog(tmp_path_factory, repo_root) -> Path:
    catalog = tmp_path_factory.mktemp("scale-catalog")
    copy_course(repo_root, COURSE, catalog)
    copy_course(repo_root, COURSE, catalog, new_slug=GPU_COURSE, title="GPU Course", gpu=1, students={"groups": ["gpu-testers"]})
    return catalog


@pytest.fixture(scope="module")
def scale_images(docker_client, build_settings, base_image, scale_catalog):
    """The course's image, the base (its volume helper) and the hub's (the node agent), built here once."""
    settings = replace(build_settings, labels=CACHE_LABEL)
    catalog = load_catalog(scale_catalog)
    published = {
        slug: publish_course(catalog.courses[slug], settings=settings, client=docker_client) for slug in (COURSE, GPU_COURSE)
    }
    builder = StackImageBuilder(settings, docker_client)
    hub = builder.build(names=["hub"]).hub
    rootfs = builder.rootfs(build=False)
    node = node_image(docker_client, rootfs, settings.image_namespace, CACHE_LABEL, settings.log_dir)
    return {
        "course": published[COURSE].image,
        "gpu-course": published[GPU_COURSE].image,
        "base": base_image,
        "hub": hub,
        "node": node,
    }


@pytest.fixture(scope="module")
def swarm(docker_client, session_id, session_labels, scale_images, tmp_path_factory):
    """Manager, two CPU workers and a GPU worker; the manager is drained (it runs no student's server)."""
    certificates = EngineCertificates(tmp_path_factory.mktemp("engine-tls"))
    cluster = Cluster(
        docker_client, f"tl-scale-{session_id}", scale_images["node"], session_labels, count=4, engine_tls=certificates
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
        seconds = cluster.load_images([scale_images[key] for key in ("course", "gpu-course", "base", "hub")], workers)
        print(f"\nimages loaded into the workers in {seconds:.0f} s")
        yield cluster, certificates
    finally:
        cluster.remove()


@pytest.fixture(scope="module")
def swarm_lab(docker_client, build_settings, scale_images, scale_catalog, swarm, session_id, session_labels, tmp_path_factory):
    """The test lab, placing its servers on the swarm's workers."""
    cluster, certificates = swarm
    manager = cluster.nodes[0]
    site = tmp_path_factory.mktemp("scale-site")
    settings = {
        "swarm_placement": True,
        "client_kwargs": {"base_url": cluster.engine_url(manager), "max_pool_size": 8},
        "tls_config": certificates.hub_tls,
        "node_engine_tls": certificates.hub_tls,
        "node_engine_timeout": ENGINE_TIMEOUT_SECONDS,
        "hub_address": network_gateway(docker_client, cluster.network),
        "node_agent_image": scale_images["hub"],
        "extra_labels": dict(session_labels),
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
    (site / "50-swarm.py").write_text("\n".join(lines) + "\n")
    with names_on_loopback(TEST_DOMAIN):
        lab = start_test_lab(
            state_dir=build_settings.state_dir,  # where the course was published
            catalog=scale_catalog,
            network=f"tl-scale-students-{session_id}",
            labels=session_labels,
            site_config_dir=site,
            name_prefix=f"tls{session_id}",
            image_namespace=build_settings.image_namespace,
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
            stop_test_lab(lab, docker_client, session_labels)


def servers_by_node(cluster: Cluster, nodes=None) -> dict[str, list[str]]:
    """Student servers running on each worker (the CPU workers unless told), read from the workers' own engines."""
    placed = {}
    for node in nodes or cluster.nodes[1:3]:
        result = node.sh(
            f"docker ps --filter label={Labels.USER} --format '{{{{.Label \"{Labels.USER}\"}}}}'", check=False, timeout=60
        )
        placed[node.name] = sorted(result.stdout.split()) if result.returncode == 0 else []
    return placed


@pytest.mark.timeout(3600)  # the first run builds the base, the course, the hub and the node images
def test_servers_spread_within_reservations_and_a_lost_node_frees_its_students(swarm_lab, swarm):
    cluster, _ = swarm
    users = signed_in_users(swarm_lab)
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
def test_gpu_servers_get_distinct_devices_on_the_gpu_node_and_get_them_back_when_it_is_lost(swarm_lab, swarm):
    cluster, _ = swarm
    users = signed_in_users(swarm_lab)
    gpu_worker = cluster.nodes[3]
    for name in GPU_STUDENTS:
        response = users(name).start(GPU_COURSE)
        assert response.status_code in (201, 202), response.text
    for name in GPU_STUDENTS:
        users(name).wait_until_ready(GPU_COURSE, timeout=240)
    ledger = GpuLedger.open(swarm_lab.hub_settings().ledger_url)
    holdings = {h.username: (h.node, h.device_uuid) for h in ledger.holdings()}
    assert set(holdings) == set(GPU_STUDENTS) and {node for node, _ in holdings.values()} == {gpu_worker.name}
    assert len({device for _, device in holdings.values()}) == 2  # no device twice
    # Each container asked its node's engine for exactly its ledger device.
    for name, (_, device) in holdings.items():
        container = swarm_lab.names.container(name, GPU_COURSE)
        requested = gpu_worker.docker("inspect", "--format", "{{json .HostConfig.DeviceRequests}}", container).stdout
        assert json.loads(requested)[0]["DeviceIDs"] == [device], requested
    gpu_worker.container.stop(timeout=0)
    switched_off = time.monotonic()
    for name in GPU_STUDENTS:
        users(name).wait_until_stopped(GPU_COURSE, timeout=POLL_SECONDS + ENGINE_TIMEOUT_SECONDS + 5)
    print(f"\nthe hub found the GPU node's servers stopped after {time.monotonic() - switched_off:.1f} s")
    assert ledger.holdings() == []  # their GPUs are free again in the ledger
    refused = users(GPU_STUDENTS[0]).start(GPU_COURSE)
    assert refused.status_code == 503, refused.text
    assert refused.json()["message"] == f"no gpu node is up for {GPU_COURSE} ({gpu_worker.name} down); try again later"
