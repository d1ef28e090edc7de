"""Cluster spawn: first starts at once on a swarm's workers, beside one machine and plain DockerSpawner (issue 14).

Three hubs run on this machine at once, on the same course image (``crowd-course``: intro-python's environment,
an eighth of a CPU and 384M a server, so sixteen fit a 2-CPU worker and thirty the two CPU workers):

* ``cluster``: the lab of tests/support/scale.py (its provider, proxy and hub here, ``swarm_placement`` on) placing
  servers on a Docker-in-Docker swarm: a drained manager, two CPU workers and a GPU worker, each node's engine
  reached over mutual TLS;
* ``single``: the same lab without ``swarm_placement`` (no swarm site file): servers on this machine's engine;
* ``peer``: the frozen baseline (bench/peer_jupyterhub_config.py), started by class_start.py's ``start_peer``.

For each level (1, 10, 30 concurrent), each system runs one cold round (students new to it), the order rotating
from level to level. The round is class_start.py's ``run_round``: every start is sent at the same moment (a POST
to the hub's REST API with the admin's token; the users were made first), each timed until its progress stream
says ready (the hub has routed it), then all are stopped and gone before the next round. On the cluster, where each
server ran is read from the workers' own engines before the stop.

Stand-ins: the nodes are containers on this one machine (2 CPUs; each node reports them all), so the cluster
figure measures the hub's placement and remote-engine path, not added hardware.

The swarm, the labs and their helpers are the tests' (tests/support): this script puts tests/ on ``sys.path``.
What pytest's fixtures give the tests is made here: the engine, build settings with the tests' image namespace
(TEACHLAB_TEST_IMAGE_NAMESPACE, else teachlab-test: their cached images are reused), the cached base image, a run
id and a label. Everything the run makes carries that label and is removed at the end, failed or not; the images
labelled as the tests' cache stay.

    .venv/bin/python bench/cluster_spawn.py [--levels 1,10,30] [--skip-peer]

Writes bench/results/cluster_spawn.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path

import docker
import docker.errors
import requests
from class_start import PEER_NETWORK, Peer, System, Teachlab, run_round, start_peer

from spawner.core.contract import StateLayout
from spawner.devlab.lab import Lab
from spawner.engine import connect
from spawner.images.build import ImageBuilder
from spawner.images.settings import BuildSettings

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.cleanup import remove_labelled  # noqa: E402
from support.cluster import Cluster  # noqa: E402
from support.hub import signed_in_users  # noqa: E402
from support.lab_fixtures import start_test_lab, stop_test_lab  # noqa: E402
from support.production import CACHE_LABEL  # noqa: E402
from support.scale import (  # noqa: E402
    CROWD_COURSE,
    build_scale_images,
    make_scale_catalog,
    publish_scale_courses,
    running_swarm,
    servers_by_node,
    swarm_lab,
)

RESULTS = REPO / "bench" / "results"
LABEL_KEY = "org.teachlab.bench"
NAMESPACE = os.environ.get("TEACHLAB_TEST_IMAGE_NAMESPACE", "teachlab-test")
CAPACITY = 30  # crowd-course servers the two CPU workers hold (sixteen each, by CPU)


def admin_system(lab: Lab, name: str, client: docker.DockerClient) -> Teachlab:
    """class_start's Teachlab system on crowd-course, driven by the "admin" account signed in through the provider."""
    return Teachlab(lab, signed_in_users(lab)("admin").token, client.api, course=CROWD_COURSE, name=name)


@contextmanager
def single_server_lab(
    client: docker.DockerClient, folder: Path, settings: BuildSettings, catalog: Path, ca_folder: Path, run_id: str, labels
) -> Iterator[Lab]:
    """The cluster's lab without the swarm: a state folder of its own holding a copy of the published courses (and of
    the cluster lab's CA, so one CA bundle serves both labs), servers on this machine's engine."""
    state = folder / "single-state"
    shutil.copytree(settings.registry_dir, state / settings.registry_dir.name)
    tls = StateLayout(state).lab / ca_folder.name
    tls.mkdir(parents=True)
    for name in ("ca.crt", "ca.key"):
        shutil.copy2(ca_folder / name, tls / name)
    site = folder / "single-site"
    site.mkdir()
    lab = start_test_lab(
        state_dir=state,
        catalog=catalog,
        network=f"tl-bench-students-{run_id}",
        labels=labels,
        site_config_dir=site,
        name_prefix=f"tlb{run_id}",
        image_namespace=settings.image_namespace,
    )
    try:
        yield lab
    finally:
        stop_test_lab(lab, client, labels)


@contextmanager
def running_peer(folder: Path, image: str, client: docker.DockerClient, users: Sequence[str]) -> Iterator[Peer]:
    """Plain JupyterHub + DockerSpawner (class_start.py's), on the same image; its servers, volumes and (when this
    run made it) network are removed afterwards."""
    network_existed = bool(client.networks.list(names=[PEER_NETWORK]))
    token = secrets.token_hex(32)
    process = None
    try:
        process = start_peer(folder, image, token, client)
        yield Peer(process, token, client.api)
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)
        for user in users:  # named by the frozen configuration, which labels no volume: this run's users' only
            for find, name in ((client.containers.get, f"peer-jupyter-{user}"), (client.volumes.get, f"peer-home-{user}")):
                try:
                    find(name).remove(force=True)
                except docker.errors.NotFound:
                    pass
        if not network_existed:
            for network in client.networks.list(names=[PEER_NETWORK]):
                network.remove()


def placement(cluster: Cluster, users: Sequence[str]) -> Callable[[], dict]:
    """Servers of this round on each worker (the GPU worker included), read from the workers' own engines."""

    def read() -> dict:
        placed = servers_by_node(cluster, cluster.nodes[1:])
        return {"servers_by_node": {node: len(set(names) & set(users)) for node, names in placed.items()}}

    return read


def make_users(system: System, users: Sequence[str]) -> None:
    """The round's students exist before their starts are sent (409: all of them already did)."""
    made = requests.post(f"{system.api}/users", json={"usernames": list(users)}, headers=system.headers(), timeout=120)
    if made.status_code not in (201, 409):
        raise RuntimeError(f"{system.name}: making the users answered HTTP {made.status_code}: {made.text[:200]}")


def run_levels(
    folder: Path, client: docker.DockerClient, run_id: str, labels, students: Mapping[int, list[str]], *, with_peer: bool
) -> dict:
    everyone = [name for group in students.values() for name in group]
    settings = BuildSettings.from_environment(state_dir=folder / "published", image_namespace=NAMESPACE, labels=labels)
    ImageBuilder(replace(settings, labels=CACHE_LABEL), client=client).build_base("debian-py39")  # kept between runs
    catalog = make_scale_catalog(folder / "catalog", REPO, crowd=everyone)
    (folder / "cluster-site").mkdir()
    images = build_scale_images(client, settings)
    with ExitStack() as stack:
        swarm = stack.enter_context(running_swarm(client, f"tl-bench-{run_id}", images, labels, folder / "engine-tls"))
        courses = publish_scale_courses(client, settings, catalog, swarm.registry)
        images = {**images, CROWD_COURSE: courses[CROWD_COURSE].image}
        cluster_lab = stack.enter_context(
            swarm_lab(
                client,
                state_dir=settings.state_dir,
                image_namespace=settings.image_namespace,
                catalog=catalog,
                images=images,
                swarm=swarm,
                session_id=run_id,
                labels=labels,
                site_dir=folder / "cluster-site",
            )
        )
        single_lab = stack.enter_context(
            single_server_lab(client, folder, settings, catalog, cluster_lab.certificates.folder, run_id, labels)
        )
        systems: list[System] = [admin_system(cluster_lab, "cluster", client), admin_system(single_lab, "single", client)]
        if with_peer:
            systems.append(stack.enter_context(running_peer(folder, images[CROWD_COURSE], client, everyone)))
        for system in systems:
            make_users(system, everyone)
        cluster = swarm.cluster
        print(f"cluster spawn: {images[CROWD_COURSE]}, levels {list(students)}", flush=True)
        rounds = []
        for position, users in enumerate(students.values()):
            for system in systems[position % len(systems) :] + systems[: position % len(systems)]:
                read_placement = placement(cluster, users) if system.name == "cluster" else None
                rounds.append(run_round(system, users, "cold", read_placement))
        nodes = {node.name: role for node, role in zip(cluster.nodes, ("manager (drained)", "cpu", "cpu", "gpu"), strict=True)}
    return {"image": images[CROWD_COURSE], "nodes": nodes, "rounds": rounds}


def table(rounds: list[dict]) -> str:
    """One line per level: p50 / p95 / max / wall of each system, failures, and the cluster's servers per node."""
    systems = list(dict.fromkeys(entry["system"] for entry in rounds))
    lines = [
        "| concurrent | "
        + " | ".join(f"{name} p50 / p95 / max / wall (s)" for name in systems)
        + f" | failures ({' / '.join(systems)}) | cluster servers per node |"
    ]
    lines.append("|---:|" + "---|" * len(systems) + "---|---|")
    for level in dict.fromkeys(entry["concurrent"] for entry in rounds):
        by_system = {entry["system"]: entry for entry in rounds if entry["concurrent"] == level}
        figures = [" / ".join(str(by_system[name][key]) for key in ("p50_s", "p95_s", "max_s", "wall_s")) for name in systems]
        failures = " / ".join(str(by_system[name]["failures"]) for name in systems)
        placed = ", ".join(f"{node}: {count}" for node, count in by_system.get("cluster", {}).get("servers_by_node", {}).items())
        lines.append(f"| {level} | " + " | ".join(figures) + f" | {failures} | {placed} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,10,30", help=f"concurrent starts per round, comma separated ({CAPACITY} at most)")
    parser.add_argument("--skip-peer", action="store_true", help="without plain JupyterHub + DockerSpawner")
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]
    if not all(0 < level <= CAPACITY for level in levels):
        parser.error(f"--levels: each from 1 to {CAPACITY} (what the two CPU workers hold of crowd-course)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped run still takes its swarm and labs down
    run_id = uuid.uuid4().hex[:8]
    labels = {LABEL_KEY: f"cluster-spawn-{run_id}"}
    # Cold rounds: each level's students are new (their names carry the level).
    students = {level: [f"cs{level:02d}u{index:02d}" for index in range(level)] for level in levels}
    client = connect()
    started = time.time()
    try:
        with tempfile.TemporaryDirectory(prefix="teachlab-bench-") as scratch:
            measured = run_levels(Path(scratch), client, run_id, labels, students, with_peer=not args.skip_peer)
    finally:
        remove_labelled(client, f"{LABEL_KEY}={labels[LABEL_KEY]}")
    result = {
        "benchmark": "cluster_spawn",
        "what": "concurrent first starts through the hub API until ready and routed: on a swarm's two CPU workers "
        "(Docker-in-Docker nodes on this machine), the same lab on this machine alone, plain DockerSpawner",
        "cpus": os.cpu_count(),
        "command": "bench/cluster_spawn.py " + " ".join(sys.argv[1:]),
        "minutes": round((time.time() - started) / 60, 1),
        **measured,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cluster_spawn.json").write_text(json.dumps(result, indent=2))
    print(table(measured["rounds"]))
    print("-> bench/results/cluster_spawn.json")


if __name__ == "__main__":
    main()
