"""Class start: many students press start at once, side by side with plain JupyterHub + DockerSpawner.

Two hubs run on this machine at once, on the same course image (intro-python, published by Teachlab):

* ``teachlab``: the real lab (provider, proxy, hub with CourseSpawner, its services) on a temporary state folder;
* ``peer``: plain JupyterHub + DockerSpawner with ``bench/peer_jupyterhub_config.py``, a copy of the frozen
  baseline (../shared/bench-peer), used unchanged.

For 1, 10, 25, 50 and 100 concurrent starts, each system runs a cold round (new students: new volumes) and a
warm round (the same students again, their volumes kept), the two systems alternating which goes first. Every
start is a POST to the hub's REST API followed by the hub's progress stream until the server is ready (the hub
has routed it: the moment a browser is sent into JupyterLab). Per round: p50, p95, wall, failures, hub CPU
seconds per spawn (the hub process), CPU seconds each server took to become ready (its container's cgroup at
that moment) and idle memory per server (10 s after the last one was ready).

Then the warmed session (Teachlab): the class pre-warm (``api/warm/<course>``, what ``teachlab class warm
--now`` calls) starts 50 students' servers; once they idle, all 50 "click" at the same moment: the home page's
"open" link of a running server (its own origin, through the proxy) to the JupyterLab page and its
kernelspecs, and one more student in Chromium, from the home page's "open" to the JupyterLab launcher.

    .venv/bin/python bench/class_start.py [--sizes 1,10,25,50,100] [--skip-browser]

Writes bench/results/class_start.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import docker
import requests
import yaml

from spawner.catalog import load_catalog
from spawner.core.contract import Scopes
from spawner.devlab.lab import Lab, LabPorts, free_port
from spawner.devlab.names import chromium_resolver_rules, names_on_loopback
from spawner.images.build import ImageBuilder
from spawner.images.publish import publish_course
from spawner.images.settings import BuildSettings
from spawner.node import firewall
from spawner.node.disks import VolumeStore

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
PEER_CONFIG = REPO / "bench" / "peer_jupyterhub_config.py"
CHP = REPO / "deploy" / "node_modules" / ".bin" / "configurable-http-proxy"
LABEL_KEY = "org.teachlab.bench"
LABEL = {LABEL_KEY: "class-start"}
COURSE = "intro-python"
SESSION_COURSE = "class-session"  # the same environment, its own students: the warmed session's class
PEER_NETWORK = "peer-bench-net"
PEER_URL = "http://127.0.0.1:8010"
START_TIMEOUT_SECONDS = 900
SETTLE_SECONDS = 10
WARM_SESSION_SIZE = 50
# The warm budget counts each server at its course's memory limit (1G), not at what an idle one uses.
WARM_MEMORY_BUDGET = "64G"
BROWSER_STUDENT = "ws-browser"


# -- measuring one start ----------------------------------------------------------------------------------
@dataclass
class Start:
    user: str
    seconds: float | None = None
    error: str = ""
    boot_cpu_seconds: float | None = None


def cgroup_file(pid: int, controller: str, name: str) -> Path:
    """A file of a container's cgroup (v1 here; v2 has one hierarchy), from its init process."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(",") or controllers == "":
            root = Path("/sys/fs/cgroup") / (controllers if controllers else "")
            candidate = root / path.lstrip("/") / name
            if candidate.exists():
                return candidate
    raise FileNotFoundError(f"no {controller} cgroup file {name} for pid {pid}")


def container_cpu_seconds(client: docker.APIClient, name: str) -> float | None:
    try:
        pid = client.inspect_container(name)["State"]["Pid"]
        return int(cgroup_file(pid, "cpuacct", "cpuacct.usage").read_text()) / 1e9
    except (docker.errors.NotFound, FileNotFoundError, ValueError):
        return None


def container_memory_bytes(client: docker.APIClient, name: str) -> int | None:
    """What ``docker stats`` shows: usage without the inactive page cache."""
    try:
        pid = client.inspect_container(name)["State"]["Pid"]
        usage = int(cgroup_file(pid, "memory", "memory.usage_in_bytes").read_text())
        stat = dict(line.split() for line in cgroup_file(pid, "memory", "memory.stat").read_text().splitlines())
        return usage - int(stat.get("total_inactive_file", 0))
    except (docker.errors.NotFound, FileNotFoundError, ValueError):
        return None


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class System:
    """One hub under test: how to start, follow, stop and find a student's server."""

    name: str
    api: str
    token: str
    docker: docker.APIClient

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def server_path(self, user: str) -> str:
        raise NotImplementedError

    def container(self, user: str) -> str:
        raise NotImplementedError

    def hub_pid(self) -> int:
        raise NotImplementedError

    def start(self, user: str, barrier: threading.Barrier) -> Start:
        result = Start(user)
        barrier.wait()
        began = time.monotonic()
        try:
            response = requests.post(f"{self.api}/users/{user}/{self.server_path(user)}", headers=self.headers(), timeout=120)
            if response.status_code == 202:
                self._follow_progress(user)
            elif response.status_code != 201:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
            result.seconds = time.monotonic() - began
            result.boot_cpu_seconds = container_cpu_seconds(self.docker, self.container(user))
        except Exception as error:  # noqa: BLE001 - a failed start is a result, not the end of the benchmark
            result.error = f"{type(error).__name__}: {error}"[:300]
        return result

    def _follow_progress(self, user: str) -> None:
        with requests.get(
            f"{self.api}/users/{user}/{self.server_path(user)}/progress",
            headers={**self.headers(), "Accept": "text/event-stream"},
            stream=True,
            timeout=START_TIMEOUT_SECONDS,
        ) as stream:
            for line in stream.iter_lines(decode_unicode=True):
                if line and line.startswith("data:"):
                    event = json.loads(line[5:])
                    if event.get("failed"):
                        raise RuntimeError(event.get("message", "failed"))
                    if event.get("ready"):
                        return
        raise RuntimeError("progress stream ended without ready")

    def stop_all(self, users: list[str]) -> None:
        with ThreadPoolExecutor(16) as pool:
            list(
                pool.map(
                    lambda user: requests.delete(
                        f"{self.api}/users/{user}/{self.server_path(user)}", headers=self.headers(), timeout=300
                    ),
                    users,
                )
            )
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and self.running(users):
            time.sleep(1)

    def running(self, users: list[str]) -> list[str]:
        listing = requests.get(f"{self.api}/users", headers=self.headers(), timeout=60).json()
        wanted = set(users)
        return [user["name"] for user in listing if user["name"] in wanted and user.get("servers")]


class Teachlab(System):
    def __init__(self, lab: Lab, token: str, client: docker.APIClient, *, course: str = COURSE, name: str = "teachlab"):
        self.lab, self.token, self.docker, self.course, self.name = lab, token, client, course, name
        self.api = f"{lab.public_url}/hub/api"

    def server_path(self, user: str) -> str:
        return f"servers/{self.course}"

    def container(self, user: str) -> str:
        return self.lab.names.container(user, self.course)

    def hub_pid(self) -> int:
        return self.lab.hub.pid()


class Peer(System):
    name = "peer"

    def __init__(self, process: subprocess.Popen, token: str, client: docker.APIClient):
        self.process, self.token, self.docker = process, token, client
        self.api = f"{PEER_URL}/hub/api"

    def server_path(self, user: str) -> str:
        return "server"

    def container(self, user: str) -> str:
        return f"peer-jupyter-{user}"

    def hub_pid(self) -> int:
        return self.process.pid


# -- rounds -------------------------------------------------------------------------------------------------
def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))]


def run_round(system: System, users: list[str], kind: str, while_running: Callable[[], dict] | None = None) -> dict:
    """All ``users`` start at once; summary of the round. ``while_running`` reads more (where the servers run, say)
    before they are stopped; its keys join the result."""
    hub_cpu_before = process_cpu_seconds(system.hub_pid())
    barrier = threading.Barrier(len(users))
    began = time.monotonic()
    with ThreadPoolExecutor(len(users)) as pool:
        starts = list(pool.map(lambda user: system.start(user, barrier), users))
    wall = time.monotonic() - began
    hub_cpu = process_cpu_seconds(system.hub_pid()) - hub_cpu_before
    time.sleep(SETTLE_SECONDS)
    memory = [m for user in users if (m := container_memory_bytes(system.docker, system.container(user))) is not None]
    extra = while_running() if while_running else {}
    system.stop_all(users)
    done = [start.seconds for start in starts if start.seconds is not None]
    boots = [start.boot_cpu_seconds for start in starts if start.boot_cpu_seconds is not None]
    result = {
        "system": system.name,
        "kind": kind,
        "concurrent": len(users),
        "p50_s": round(statistics.median(done), 2) if done else None,
        "p95_s": round(percentile(done, 0.95), 2) if done else None,
        "max_s": round(max(done), 2) if done else None,
        "wall_s": round(wall, 2),
        "failures": len(users) - len(done),
        "errors": sorted({start.error for start in starts if start.error})[:5],
        "hub_cpu_s_per_spawn": round(hub_cpu / len(users), 3),
        "server_boot_cpu_s_median": round(statistics.median(boots), 3) if boots else None,
        "idle_memory_mib_per_server": round(statistics.mean(memory) / 2**20, 1) if memory else None,
        **extra,
    }
    print(
        f"  {system.name:8} {kind:4} n={len(users):3}  p50 {result['p50_s']} s  p95 {result['p95_s']} s  max {result['max_s']} s  "
        f"wall {result['wall_s']} s  failures {result['failures']}  hub CPU/spawn {result['hub_cpu_s_per_spawn']} s  "
        f"boot CPU {result['server_boot_cpu_s_median']} s  idle {result['idle_memory_mib_per_server']} MiB",
        flush=True,
    )
    return result


# -- the warmed session ----------------------------------------------------------------------------------
def open_warm_server(lab: Lab, token: str, user: str, barrier: threading.Barrier) -> float:
    """A student's "open" on a warm server (the home page links to it): JupyterLab's page and kernelspecs load."""
    headers = {"Authorization": f"token {token}"}
    server = lab.server_url(user, SESSION_COURSE)
    barrier.wait()
    began = time.monotonic()
    page = requests.get(server + "lab", headers=headers, allow_redirects=False, timeout=60)
    if page.status_code != 200 or "JupyterLab" not in page.text:
        raise RuntimeError(f"{user}: {server}lab answered HTTP {page.status_code}")
    kernelspecs = requests.get(server + "api/kernelspecs", headers=headers, timeout=60)
    kernelspecs.raise_for_status()
    return time.monotonic() - began


def browser_click(lab: Lab, user: str, barrier: threading.Barrier, home: Path) -> float:
    """One student in Chromium: signed in on the home page, then "open" to the JupyterLab launcher."""
    from playwright import sync_api

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium") or "/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--no-first-run", chromium_resolver_rules(lab.domain)],
            env={**os.environ, "HOME": str(home)},
        )
        context = browser.new_context(ignore_https_errors=True, viewport={"width": 1400, "height": 900})
        page = context.new_page()
        page.goto(f"{lab.public_url}/hub/home")
        page.get_by_role("button", name="Sign in with University login").click()
        page.wait_for_url(f"{lab.issuer}/**")
        page.locator("#username").fill(user)
        page.locator("#password").fill(lab.password(user))
        page.locator("button#login").click()
        page.wait_for_url(f"{lab.public_url}/hub/home")
        page.locator(f"#open-{SESSION_COURSE}").wait_for(state="visible", timeout=120_000)
        barrier.wait()
        began = time.monotonic()
        page.locator(f"#open-{SESSION_COURSE}").click()
        page.locator(".jp-Launcher").first.wait_for(state="visible", timeout=120_000)
        took = time.monotonic() - began
        browser.close()
        return took


def warmed_session(lab: Lab, token: str, students: list[str], *, with_browser: bool, home: Path) -> dict:
    everyone = students + ([BROWSER_STUDENT] if with_browser else [])
    response = requests.post(
        f"http://127.0.0.1:{lab.ports.warmer}/services/{Scopes.WARMER_SERVICE}/api/warm/{SESSION_COURSE}",
        headers={"Authorization": f"token {token}"},
        timeout=900,
    )
    response.raise_for_status()
    warmed = response.json()
    api = f"{lab.public_url}/hub/api"
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        listing = requests.get(f"{api}/users", headers={"Authorization": f"token {token}"}, timeout=60).json()
        ready = {user["name"] for user in listing if (user.get("servers") or {}).get(SESSION_COURSE, {}).get("ready")}
        if set(everyone) <= ready:
            break
        time.sleep(2)
    time.sleep(2 * SETTLE_SECONDS)  # the class has not started yet: the warm servers idle
    barrier = threading.Barrier(len(everyone))
    with ThreadPoolExecutor(len(everyone)) as pool:
        clicks = [pool.submit(open_warm_server, lab, token, user, barrier) for user in students]
        browser = pool.submit(browser_click, lab, BROWSER_STUDENT, barrier, home) if with_browser else None
        api_seconds, errors = [], []
        for click in clicks:
            try:
                api_seconds.append(click.result())
            except Exception as error:  # noqa: BLE001 - a failed click is a result too
                errors.append(str(error)[:200])
        browser_seconds = browser.result() if browser else None
    result = {
        "warmed": {key: len(value) for key, value in warmed.items() if isinstance(value, list)},
        "students": len(students),
        "api_p50_s": round(statistics.median(api_seconds), 3) if api_seconds else None,
        "api_p95_s": round(percentile(api_seconds, 0.95), 3) if api_seconds else None,
        "api_max_s": round(max(api_seconds), 3) if api_seconds else None,
        "failures": len(errors),
        "errors": errors[:5],
        "browser_open_to_launcher_s": round(browser_seconds, 2) if browser_seconds is not None else None,
    }
    print(
        f"  warmed session: {len(students)} clicks at once, p50 {result['api_p50_s']} s, p95 {result['api_p95_s']} s, "
        f"failures {len(errors)}; browser open -> launcher {result['browser_open_to_launcher_s']} s",
        flush=True,
    )
    return result


# -- setting up and taking down -----------------------------------------------------------------------------
def write_catalog(folder: Path, students: dict[str, list[str]]) -> Path:
    """intro-python for the rounds and a copy of it for the warmed session, each listing its students."""
    catalog = folder / "catalog"
    for slug, names in students.items():
        shutil.copytree(REPO / "course_envs" / COURSE, catalog / slug)
        path = catalog / slug / "course.yaml"
        data = yaml.safe_load(path.read_text())
        data["students"] = {"users": names}
        if slug != COURSE:
            data["title"] = "Class session"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return catalog


def start_teachlab(folder: Path, catalog: Path, admin_token: str) -> Lab:
    site = folder / "site"
    site.mkdir()
    scopes = ["admin:users", "admin:servers", "access:servers", "list:users", "read:metrics", Scopes.WARM]
    scopes.append(f"access:services!service={Scopes.WARMER_SERVICE}")
    (site / "90-bench-admin.py").write_text(
        "# The benchmark's admin token, as the peer has one.\n"
        f'c.JupyterHub.services.append({{"name": "bench-admin", "api_token": {admin_token!r}}})\n'
        f'c.JupyterHub.load_roles.append({{"name": "bench-admin", "scopes": {scopes!r}, "services": ["bench-admin"]}})\n'
    )
    lab = Lab(
        state_dir=folder / "state",
        catalog_path=catalog,
        network="teachlab-bench",
        extra_labels=LABEL,
        name_prefix="tlbench",
        accounts=({"username": BROWSER_STUDENT, "name": "Browser Student", "groups": []},),
        ports=LabPorts(**{key: free_port() for key in LabPorts.__dataclass_fields__}),
        extra_env={"TEACHLAB_SITE_CONFIG_DIR": str(site), "TEACHLAB_WARM_MEMORY_BUDGET": WARM_MEMORY_BUDGET},
    )
    lab.up()
    return lab


def start_peer(folder: Path, image: str, admin_token: str, client: docker.DockerClient) -> subprocess.Popen:
    scratch = folder / "peer"
    scratch.mkdir()
    shutil.copy(PEER_CONFIG, scratch / "jupyterhub_config.py")
    (scratch / "admin_token").write_text(admin_token)
    if not client.networks.list(names=[PEER_NETWORK]):
        client.networks.create(PEER_NETWORK, driver="bridge", labels=LABEL)
    env = {
        **os.environ,
        "PEER_NETWORK": PEER_NETWORK,
        "PEER_IMAGE": image,
        "PEER_CMD": "/opt/jupyter/bin/jupyterhub-singleuser",
        "PEER_CHP": str(CHP),
        "PEER_TOKEN_FILE": str(scratch / "admin_token"),
    }
    log = (scratch / "jupyterhub.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyterhub", "-f", str(scratch / "jupyterhub_config.py")],
        cwd=scratch,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{PEER_URL}/hub/api/", timeout=2).status_code == 200:
                return process
        except requests.RequestException:
            pass
        time.sleep(0.5)
    process.terminate()
    process.wait(30)
    raise RuntimeError(f"the peer hub did not come up; see {scratch / 'jupyterhub.log'}")


def clean_up(client: docker.DockerClient, lab: Lab | None) -> None:
    for container in client.containers.list(all=True, filters={"label": f"{LABEL_KEY}=class-start"}):
        container.remove(force=True)
    for container in client.containers.list(all=True, filters={"label": "org.peerbench=1"}):
        container.remove(force=True)
    if lab is not None:
        firewall.remove(lab.student_network())
        store = VolumeStore(lab.layout.volumes)
        for name in store.names():
            store.remove(name)
    for volume in client.volumes.list(filters={"label": f"{LABEL_KEY}=class-start"}):
        volume.remove(force=True)
    for volume in client.volumes.list():
        if volume.name.startswith("peer-home-"):
            volume.remove(force=True)
    for network in client.networks.list(names=[PEER_NETWORK]):
        network.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,25,50,100", help="concurrent starts per round, comma separated")
    parser.add_argument("--skip-browser", action="store_true", help="the warmed session without the Chromium student")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped run still takes its labs down
    sizes = [int(size) for size in args.sizes.split(",")]
    students = {size: [f"s{size:03d}u{index:03d}" for index in range(size)] for size in sizes}
    session_students = [f"ws{index:03d}" for index in range(WARM_SESSION_SIZE)]
    round_students = [name for group in students.values() for name in group]
    everyone = round_students + session_students + [BROWSER_STUDENT]
    client = docker.from_env()
    api_client = client.api
    admin_token = secrets.token_hex(32)
    rounds: list[dict] = []
    lab = None
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="teachlab-bench-") as scratch, ExitStack() as stack:
        folder = Path(scratch)
        catalog = write_catalog(folder, {COURSE: round_students, SESSION_COURSE: session_students + [BROWSER_STUDENT]})
        settings = BuildSettings.from_environment(state_dir=folder / "state", labels=LABEL)
        ImageBuilder(settings).build_base("debian-py39")
        courses = load_catalog(catalog).courses
        image = publish_course(courses[COURSE], settings=settings).image
        publish_course(courses[SESSION_COURSE], settings=settings)
        try:
            lab = start_teachlab(folder, catalog, admin_token)
            stack.enter_context(names_on_loopback(lab.domain))
            os.environ["REQUESTS_CA_BUNDLE"] = str(lab.certificates.ca_certificate)
            peer_process = start_peer(folder, image, admin_token, client)
            peer = Peer(peer_process, admin_token, api_client)
            requests.post(f"{peer.api}/users", json={"usernames": everyone}, headers=peer.headers(), timeout=60)
            teachlab = Teachlab(lab, admin_token, api_client)
            print(f"class start: {image}, sizes {sizes}", flush=True)
            for position, size in enumerate(sizes):
                order = [teachlab, peer] if position % 2 == 0 else [peer, teachlab]
                for kind in ("cold", "warm"):
                    for system in order:
                        rounds.append(run_round(system, students[size], kind))
            session = warmed_session(lab, admin_token, session_students, with_browser=not args.skip_browser, home=folder)
        finally:
            if lab is not None:
                lab.down()
            if "peer_process" in locals():
                peer_process.terminate()
                peer_process.wait(30)
            clean_up(client, lab)
    result = {
        "benchmark": "class_start",
        "what": "concurrent starts through the hub API until ready and routed; cold = new volumes, warm = volumes kept",
        "image": image,
        "cpus": os.cpu_count(),
        "command": "bench/class_start.py " + " ".join(sys.argv[1:]),
        "minutes": round((time.time() - started) / 60, 1),
        "rounds": rounds,
        "warmed_session": session,
        "ratios_p50_teachlab_over_peer": {
            f"{kind}-{size}": round(ours["p50_s"] / theirs["p50_s"], 2)
            for size in sizes
            for kind in ("cold", "warm")
            for ours in rounds
            if ours["system"] == "teachlab" and ours["kind"] == kind and ours["concurrent"] == size and ours["p50_s"]
            for theirs in rounds
            if theirs["system"] == "peer" and theirs["kind"] == kind and theirs["concurrent"] == size and theirs["p50_s"]
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "class_start.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result["ratios_p50_teachlab_over_peer"]), "-> bench/results/class_start.json")


if __name__ == "__main__":
    main()
