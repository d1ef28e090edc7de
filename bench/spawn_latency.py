"""Spawn latency: from the start request to a ready JupyterLab server, side by side with the floor.

Ours: a real lab (provider, proxy, hub, CourseSpawner) starts intro-python for a student through the
REST API; the time runs until the hub reports the server ready (the hub has reached the server over
HTTP and routed it in the proxy: the moment a browser is sent into JupyterLab). Baseline: `docker run` of the very same image running a bare `jupyter server` (no hub, no
access checks, no volumes, no proxy), timed until its /api/status answers — the floor any spawner pays.

    .venv/bin/python bench/spawn_latency.py [--rounds 5]

Writes bench/results/spawn_latency.json and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import requests

from spawner.catalog import load_catalog
from spawner.devlab.lab import Lab, LabPorts, free_port
from spawner.engine import connect
from spawner.images.build import ImageBuilder
from spawner.images.publish import publish_course
from spawner.images.settings import BuildSettings

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
LABEL = {"org.teachlab.bench": "spawn-latency"}


def wait_for(condition, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise TimeoutError("condition not met")


def answers(url: str, **kwargs) -> bool:
    try:
        return requests.get(url, timeout=2, **kwargs).status_code == 200
    except requests.RequestException:
        return False


def measure_lab(lab: Lab, users: list[str]) -> list[float]:
    headers = {"Authorization": f"token {lab.secrets()['cli_token']}"}
    api = f"{lab.public_url}/hub/api"
    requests.post(f"{api}/users", json={"usernames": users}, headers=headers, timeout=30)
    timings = []
    for user in users:
        started = time.monotonic()
        response = requests.post(f"{api}/users/{user}/servers/intro-python", headers=headers, timeout=180)
        response.raise_for_status()
        wait_for(
            lambda user=user: (
                requests.get(f"{api}/users/{user}", headers=headers, timeout=10)
                .json()["servers"]
                .get("intro-python", {})
                .get("ready")
            )
        )
        wait_for(lambda user=user: f"/user/{user}/intro-python" in lab.proxy_routes())
        timings.append(time.monotonic() - started)
        requests.delete(f"{api}/users/{user}/servers/intro-python", headers=headers, timeout=60)
    return timings


def measure_floor(image: str, rounds: int) -> list[float]:
    client = connect()
    timings = []
    for _ in range(rounds):
        port = free_port()
        started = time.monotonic()
        container = client.containers.run(
            image,
            ["/opt/jupyter/bin/jupyter", "server", "--ip=0.0.0.0", "--port=8888", "--ServerApp.token=", "--ServerApp.password="],
            detach=True,
            ports={"8888/tcp": ("127.0.0.1", port)},
            labels=LABEL,
        )
        try:
            wait_for(lambda port=port: answers(f"http://127.0.0.1:{port}/api/status"))
            timings.append(time.monotonic() - started)
        finally:
            container.remove(force=True)
    return timings


def summary(values: list[float]) -> dict:
    return {
        "runs": len(values),
        "median_s": round(statistics.median(values), 2),
        "min_s": round(min(values), 2),
        "max_s": round(max(values), 2),
        "all_s": [round(v, 2) for v in values],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="teachlab-bench-") as folder:
        state, catalog_dir = Path(folder) / "state", Path(folder) / "catalog"
        catalog_dir.mkdir()
        users = [f"bench{index:02d}" for index in range(1, args.rounds + 1)]
        course = (REPO / "course_envs" / "intro-python" / "course.yaml").read_text()
        (catalog_dir / "intro-python").mkdir()
        (catalog_dir / "intro-python" / "course.yaml").write_text(
            course.replace("  users: [student-alice]", f"  users: [{', '.join(users)}]")
        )
        (catalog_dir / "intro-python" / "environment.yml").write_text(
            (REPO / "course_envs" / "intro-python" / "environment.yml").read_text()
        )
        settings = BuildSettings.from_environment(state_dir=state, labels=LABEL)
        ImageBuilder(settings).build_base("debian-py39")
        published = publish_course(load_catalog(catalog_dir).courses["intro-python"], settings=settings)
        lab = Lab(
            state_dir=state,
            catalog_path=catalog_dir,
            network="teachlab-bench",
            extra_labels=LABEL,
            ports=LabPorts(public=free_port(), proxy_api=free_port(), hub=free_port(), oidc=free_port(), gpu_service=free_port()),
        )
        lab.up()
        try:
            ours = measure_lab(lab, users)
        finally:
            lab.down()
        floor = measure_floor(published.image, args.rounds)
    client = connect()
    for container in client.containers.list(all=True, filters={"label": "org.teachlab.bench=spawn-latency"}):
        container.remove(force=True)
    for volume in client.volumes.list(filters={"label": "org.teachlab.bench=spawn-latency"}):
        volume.remove(force=True)
    result = {
        "benchmark": "spawn_latency",
        "what": "start request -> server ready (teachlab: hub-ready and routed; baseline: /api/status answers), intro-python, one at a time",
        "teachlab": summary(ours),
        "baseline_bare_docker_run_jupyter_server": summary(floor),
        "overhead_median_s": round(statistics.median(ours) - statistics.median(floor), 2),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "spawn_latency.json").write_text(json.dumps(result, indent=2))
    print(
        f"spawn latency (median of {args.rounds}): teachlab {result['teachlab']['median_s']} s, "
        f"bare docker run + jupyter server {result['baseline_bare_docker_run_jupyter_server']['median_s']} s, "
        f"overhead {result['overhead_median_s']} s -> bench/results/spawn_latency.json"
    )


if __name__ == "__main__":
    main()
