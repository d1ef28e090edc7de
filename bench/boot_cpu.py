"""Boot CPU: the CPU seconds one course server (``jupyterhub-singleuser``) needs until it answers.

Side by side in one run, alternating: each image given, started the way plain DockerSpawner starts it and
the way CourseSpawner does (``LEAN_SERVER_ARGUMENTS``: server extensions a course does not use stay off).
The server runs in the host's network namespace and talks to a stand-in hub on 127.0.0.1 that answers
only the version check a server makes at start (named: ``StandInHub``); the time and CPU run from
``docker start`` until the server's ``/api`` answers, the CPU read from the container's cgroup then.

    .venv/bin/python bench/boot_cpu.py --image teachlab/debian-py39:v2.0.0 --image teachlab/debian-py39:v2.1.0

Writes bench/results/boot_cpu.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import docker
import requests

from spawner.devlab.lab import free_port
from spawner.hub.spawner import LEAN_SERVER_ARGUMENTS

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"
LABEL = {"org.teachlab.bench": "boot-cpu"}
SERVER = "/opt/jupyter/bin/jupyterhub-singleuser"


class StandInHub(BaseHTTPRequestHandler):
    """Answers a server's start-up version check (``GET /hub/api/``) as JupyterHub 6 would."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("X-JupyterHub-Version", "6.1.1")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"version": "6.1.1"}')

    def log_message(self, *args):
        return


def cpu_seconds(container) -> float:
    pid = container.attrs["State"]["Pid"]
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpuacct" in controllers.split(","):
            return int(Path("/sys/fs/cgroup", controllers, path.lstrip("/"), "cpuacct.usage").read_text()) / 1e9
        if controllers == "":
            stat = Path("/sys/fs/cgroup", path.lstrip("/"), "cpu.stat").read_text().split()
            return int(stat[stat.index("usage_usec") + 1]) / 1e6
    raise FileNotFoundError(f"no CPU accounting for pid {pid}")


def boot(client: docker.DockerClient, image: str, arguments: list[str], hub_port: int) -> tuple[float, float]:
    port = free_port()
    prefix = "/user/probe/"
    environment = {
        "JUPYTERHUB_API_TOKEN": "stand-in",
        "JUPYTERHUB_API_URL": f"http://127.0.0.1:{hub_port}/hub/api",
        "JUPYTERHUB_BASE_URL": "/",
        "JUPYTERHUB_SERVICE_PREFIX": prefix,
        "JUPYTERHUB_USER": "probe",
        "JUPYTERHUB_CLIENT_ID": "jupyterhub-user-probe",
        "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{port}{prefix}",
        "JUPYTERHUB_OAUTH_CALLBACK_URL": f"{prefix}oauth_callback",
        "JUPYTERHUB_OAUTH_SCOPES": "[]",
        "JUPYTERHUB_OAUTH_ACCESS_SCOPES": "[]",
    }
    container = client.containers.create(
        image,
        [SERVER, *arguments],
        environment=environment,
        network_mode="host",
        user="1000:1000",
        read_only=True,
        tmpfs={"/tmp": "size=64m", "/home/jovyan": "size=64m,uid=1000,gid=1000"},
        labels=LABEL,
    )
    try:
        began = time.monotonic()
        container.start()
        container.reload()
        while time.monotonic() - began < 60:
            try:
                if requests.get(f"http://127.0.0.1:{port}{prefix}api", timeout=1).status_code == 200:
                    return time.monotonic() - began, cpu_seconds(container)
            except requests.RequestException:
                pass
            time.sleep(0.02)
        raise TimeoutError(f"{image} did not answer: {container.logs()[-500:]!r}")
    finally:
        container.remove(force=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", action="append", required=True, help="an image with the course server (repeat)")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    hub = ThreadingHTTPServer(("127.0.0.1", 0), StandInHub)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    client = docker.from_env()
    variants = [(image, label, arguments) for image in args.image for label, arguments in (
        ("as plain DockerSpawner starts it", []),
        ("as CourseSpawner starts it", list(LEAN_SERVER_ARGUMENTS)),
    )]  # fmt: skip
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {(image, label): [] for image, label, _ in variants}
    for _ in range(args.rounds):
        for image, label, arguments in variants:
            samples[(image, label)].append(boot(client, image, arguments, hub.server_port))
    hub.shutdown()
    rows = [
        {
            "image": image,
            "started": label,
            "runs": len(values),
            "boot_cpu_s_median": round(statistics.median(cpu for _, cpu in values), 3),
            "boot_wall_s_median": round(statistics.median(wall for wall, _ in values), 3),
        }
        for (image, label), values in samples.items()
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "boot_cpu.json").write_text(json.dumps({"benchmark": "boot_cpu", "rows": rows}, indent=2))
    for row in rows:
        print(
            f"{row['image']:45} {row['started']:34} CPU {row['boot_cpu_s_median']:.3f} s  wall {row['boot_wall_s_median']:.3f} s"
        )


if __name__ == "__main__":
    main()
