"""Run the whole lab on one machine: the login provider, the proxy and the hub, as background processes.

``python -m spawner.devlab up`` (what ``make up`` runs) and the end-to-end tests both use ``Lab``: the tests get
the same processes a newcomer gets, with their own ports, state folder and catalog. Each process
writes its log and pid under ``<state>/lab/``; ``down`` stops them and keeps every volume.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from jupyterhub.utils import subdomain_hook_idna

from ..core import naming
from ..core.contract import REPO_ROOT, Scopes, StateLayout
from ..core.problems import TeachlabError
from ..core.secrets import narrow, write_private
from ..hub.settings import HubSettings
from ..node.firewall import StudentNetwork
from .tls import LabCertificates

NODE_MODULES = REPO_ROOT / "deploy" / "node_modules"
OIDC_SCRIPT = REPO_ROOT / "deploy" / "oidc" / "provider.mjs"
CHP_SCRIPT = NODE_MODULES / "configurable-http-proxy" / "bin" / "configurable-http-proxy"
HUB_CONFIG = REPO_ROOT / "jupyterhub_config.py"
OIDC_READY = "oidc-provider ready at "
OIDC_CLIENT_ID = "teachlab-hub"

DEMO_ACCOUNTS = (
    {"username": "student-alice", "name": "Alice Student", "groups": ["cs101-students", "ds201-students"]},
    {"username": "student-bob", "name": "Bob Student", "groups": ["cs101-students"]},
    {"username": "prof-lee", "name": "Professor Lee", "groups": ["cs101-staff"]},
    {"username": "admin-ada", "name": "Ada Admin", "groups": ["lab-admins"]},
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status < 500
    except urllib.error.HTTPError as error:
        return error.code < 500
    except OSError:
        return False


def _start_time(pid: int) -> int | None:
    """When a process started (clock ticks since boot), or None when it is gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _descendants(pid: int) -> list[int]:
    """Child processes of ``pid``, recursively, from /proc (services the hub started run in their own sessions)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


@dataclass
class ManagedProcess:
    """A background process with a log and a pid file; it outlives the command that started it."""

    name: str
    folder: Path

    @property
    def log_path(self) -> Path:
        return self.folder / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        return self.folder / f"{self.name}.pid"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_path.read_text())
            os.kill(pid, 0)
            return pid
        except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
            return None

    def start(self, command: list[str], env: Mapping[str, str], ready: Callable[[], bool], timeout: float = 90) -> None:
        if self.pid():
            raise TeachlabError(f"{self.name} is already running (pid {self.pid()}); stop the lab first")
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            process = subprocess.Popen(
                command,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                start_new_session=True,
            )
        self.pid_path.write_text(str(process.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise TeachlabError(
                    f"{self.name} exited with code {process.returncode}; last lines of {self.log_path}:\n{self.tail()}"
                )
            if ready():
                return
            time.sleep(0.2)
        self.stop()
        raise TeachlabError(f"{self.name} was not ready after {timeout:.0f} s; last lines of {self.log_path}:\n{self.tail()}")

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        """Stop the process; SIGKILL kills its whole tree at once, as a crash of its machine or cgroup would."""
        pid = self.pid()
        if pid is None:
            self.pid_path.unlink(missing_ok=True)
            return
        # Read while the process lives (its services are reparented once it exits), with each one's start time, so
        # that a number the kernel gives to a new process meanwhile is never signalled.
        tree = {child: _start_time(child) for child in _descendants(pid)}
        for victim in [pid, *tree] if sig == signal.SIGKILL else [pid]:
            try:
                os.kill(victim, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pid() is not None:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.1)
        # Whatever it started and left behind (a service the hub did not stop) goes with it.
        leftovers = [child for child, started in tree.items() if started is not None and _start_time(child) == started]
        for victim in [pid, *leftovers] if self.pid() is not None else leftovers:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.pid_path.unlink(missing_ok=True)


@dataclass
class LabPorts:
    public: int = 8443  # HTTPS: the hub and, one subdomain each, the users' servers
    http_redirect: int = 8000  # plain HTTP, redirected to HTTPS
    proxy_api: int = 8001
    hub: int = 8081
    oidc: int = 8082
    gpu_service: int = 8083
    ssh: int = 2222
    ssh_service: int = 8084
    warmer: int = 8085
    courses_service: int = 8086
    work_service: int = 8087


@dataclass
class Lab:
    """One lab's processes and settings. Secrets and demo passwords persist in ``<state>/lab/secrets.json``."""

    state_dir: Path
    catalog_path: Path = REPO_ROOT / "course_envs"
    ports: LabPorts = field(default_factory=LabPorts)
    network: str = "teachlab-students"
    extra_labels: Mapping[str, str] = field(default_factory=dict)
    accounts: tuple[Mapping[str, object], ...] = DEMO_ACCOUNTS
    today: str | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)
    # The lab's own domain: the hub at https://<domain>, each user's servers at https://<user>.<domain>. Browsers
    # resolve *.localhost to this machine; tests use a domain of their own mapped to loopback.
    domain: str = "teachlab.localhost"
    per_server_origins: bool = True
    auth_refresh_seconds: int = 300
    name_prefix: str = naming.DEFAULT_PREFIX

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()
        self.catalog_path = Path(self.catalog_path).resolve()
        self.layout = StateLayout(self.state_dir)
        self.folder = self.layout.lab
        self.oidc = ManagedProcess("oidc-provider", self.folder)
        self.proxy = ManagedProcess("proxy", self.folder)
        self.hub = ManagedProcess("hub", self.folder)

    @property
    def public_url(self) -> str:
        return f"https://{self.domain}:{self.ports.public}"

    @property
    def names(self) -> naming.LabNames:
        return naming.LabNames(self.name_prefix)

    @property
    def certificates(self) -> LabCertificates:
        return LabCertificates(self.folder / "tls")

    def hub_api_url(self) -> str:
        """The hub's own API, straight to the hub (no proxy, no TLS): for the lab's scripts on this machine."""
        return f"http://{self.gateway}:{self.ports.hub}/hub/api"

    def server_url(self, username: str, course: str) -> str:
        return self.hub_settings().server_url(username, course)

    def server_route(self, username: str, course: str) -> str:
        """The proxy's routing-table key of a user's server (host-routed with per-server origins)."""
        path = f"/user/{quote(username, safe='')}/{course}"
        if not self.per_server_origins:
            return path
        return "/" + subdomain_hook_idna(username, self.domain, kind="user") + path

    def service_url(self, name: str) -> str:
        return self.hub_settings().service_url(name)

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.ports.oidc}"

    def secrets(self) -> dict:
        """Tokens and demo passwords, made once per state folder (mode 0600)."""
        path = self.layout.lab_secrets
        values = {}
        if path.exists():
            narrow(path)
            values = json.loads(path.read_text())
        made = {
            key: secrets.token_hex(32)
            for key in ("proxy_token", "oidc_client_secret", "cli_token", "metrics_token")
            if key not in values  # a state folder from an earlier release lacks the newer ones
        }
        if "passwords" not in values:
            made["passwords"] = {account["username"]: secrets.token_urlsafe(9) for account in self.accounts}
        if made:
            values.update(made)
            write_private(path, json.dumps(values, indent=2).encode())
        return values

    def rotate_cli_token(self) -> None:
        """A new token for the CLI's hub service, each time the hub starts: a copied old one stops working."""
        values = {**self.secrets(), "cli_token": secrets.token_hex(32)}
        write_private(self.layout.lab_secrets, json.dumps(values, indent=2).encode())

    def password(self, username: str) -> str:
        return self.secrets()["passwords"][username]

    def _node(self) -> str:
        node = shutil.which("node")
        if node is None or not CHP_SCRIPT.exists():
            raise TeachlabError("node or the npm packages are missing; run 'make node-env' (npm ci in deploy/)")
        return node

    def hub_settings(self) -> HubSettings:
        """What the hub of this lab is told (through ``TEACHLAB_*`` variables)."""
        values = self.secrets()
        return HubSettings(
            state_dir=self.state_dir,
            catalog_path=self.catalog_path,
            public_url=self.public_url,
            hub_port=self.ports.hub,
            gpu_service_port=self.ports.gpu_service,
            ssh_port=self.ports.ssh,
            ssh_service_port=self.ports.ssh_service,
            warmer_port=self.ports.warmer,
            courses_service_port=self.ports.courses_service,
            work_service_port=self.ports.work_service,
            proxy_api_url=f"http://127.0.0.1:{self.ports.proxy_api}",
            network=self.network,
            oidc_issuer=self.issuer,
            oidc_client_id=OIDC_CLIENT_ID,
            oidc_client_secret=values["oidc_client_secret"],
            cli_token=values["cli_token"],
            metrics_token=values["metrics_token"],
            extra_labels=dict(self.extra_labels),
            today=self.today,
            per_server_origins=self.per_server_origins,
            auth_refresh_seconds=self.auth_refresh_seconds,
            name_prefix=self.name_prefix,
        )

    def hub_environment(self) -> dict[str, str]:
        return {
            **os.environ,
            **self.hub_settings().to_environment(),
            "CONFIGPROXY_AUTH_TOKEN": self.secrets()["proxy_token"],
            "PYTHONFAULTHANDLER": "1",  # a crash of the hub leaves every thread's stack in hub.log
            **self.extra_env,
        }

    def start_oidc(self) -> None:
        config_path = self._write_oidc_config()
        self.oidc.log_path.unlink(missing_ok=True)
        self.oidc.start(
            [self._node(), str(OIDC_SCRIPT), "--config", str(config_path)],
            os.environ,
            ready=lambda: OIDC_READY in self.oidc.log_path.read_text(errors="replace"),
            timeout=30,
        )

    def _write_oidc_config(self) -> Path:
        values = self.secrets()
        config = {
            "issuer": self.issuer,
            "port": self.ports.oidc,
            "host": "127.0.0.1",
            "clients": [
                {
                    "client_id": OIDC_CLIENT_ID,
                    "client_secret": values["oidc_client_secret"],
                    "redirect_uris": [f"{self.public_url}/hub/oauth_callback"],
                }
            ],
            "accounts": [
                {**account, "password": values["passwords"][account["username"]], "email": f"{account['username']}@example.edu"}
                for account in self.accounts
            ],
        }
        config_path = self.folder / "oidc-provider.json"
        write_private(config_path, json.dumps(config, indent=2).encode())
        return config_path

    def set_groups(self, username: str, groups: list[str]) -> None:
        """Change a person's groups at the provider (as the university would) and make it re-read its accounts."""
        self.accounts = tuple(
            {**account, "groups": list(groups)} if account["username"] == username else account for account in self.accounts
        )
        self._write_oidc_config()
        os.kill(self.oidc.pid(), signal.SIGHUP)

    def start_proxy(self, hub_gateway: str) -> None:
        tls = self.certificates.ensure(self.domain)
        command = [
            self._node(),
            str(CHP_SCRIPT),
            "--ip",
            "127.0.0.1",
            "--port",
            str(self.ports.public),
            "--ssl-key",
            str(tls.key),
            "--ssl-cert",
            str(tls.certificate),
            "--redirect-port",
            str(self.ports.http_redirect),
            "--redirect-to",
            str(self.ports.public),
            *(["--host-routing"] if self.per_server_origins else []),
            "--api-ip",
            "127.0.0.1",
            "--api-port",
            str(self.ports.proxy_api),
            "--default-target",
            f"http://{hub_gateway}:{self.ports.hub}",
            "--error-target",
            f"http://{hub_gateway}:{self.ports.hub}/hub/error",
        ]
        env = {**os.environ, "CONFIGPROXY_AUTH_TOKEN": self.secrets()["proxy_token"]}
        self.proxy.start(command, env, ready=lambda: _http_ok(f"http://127.0.0.1:{self.ports.proxy_api}/api/routes"), timeout=30)

    def start_hub(self) -> None:
        self.rotate_cli_token()
        command = [sys.executable, "-m", "jupyterhub", "-f", str(HUB_CONFIG)]
        self.hub.start(
            command,
            self.hub_environment(),
            timeout=120,
            ready=lambda: _http_ok(f"{self.hub_api_url()}/") and self._services_routed(),
        )

    def _services_routed(self) -> bool:
        """The lab's services answer: the hub adds a service's route (host-routed with per-server origins) once it does."""
        routes = [route.rstrip("/") for route in self.proxy_routes()]
        services = (Scopes.GPU_SERVICE, Scopes.SSH_SERVICE, Scopes.WARMER_SERVICE, Scopes.COURSES_SERVICE)
        return all(any(route.endswith(f"/services/{name}") for route in routes) for name in services)

    def ssh_command(self, username: str, course: str) -> str:
        """What a student types to reach their course container over SSH (the gateway of this lab)."""
        return f"ssh -p {self.ports.ssh} {username}+{course}@127.0.0.1"

    def proxy_routes(self) -> dict:
        """The proxy's routing table (the hub adds a service's route once the service answers)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.ports.proxy_api}/api/routes",
            headers={"Authorization": f"token {self.secrets()['proxy_token']}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return json.load(response)
        except OSError:
            return {}

    def save(self) -> None:
        """Remember where this lab listens, so ``down`` (another process, later) finds it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.layout.lab_description.write_text(
            json.dumps(
                {
                    "ports": vars(self.ports),
                    "network": self.network,
                    "catalog_path": str(self.catalog_path),
                    "domain": self.domain,
                },
                indent=2,
            )
        )

    @classmethod
    def load(cls, state_dir: Path, **defaults) -> Lab:
        """The lab last started with this state folder (or one with ``defaults`` if none was)."""
        path = StateLayout(Path(state_dir)).lab_description
        if not path.exists():
            return cls(state_dir=state_dir, **defaults)
        saved = json.loads(path.read_text())
        known_ports = {key: value for key, value in saved["ports"].items() if key in LabPorts.__dataclass_fields__}
        return cls(
            state_dir=state_dir,
            ports=LabPorts(**known_ports),
            network=saved["network"],
            catalog_path=Path(saved["catalog_path"]),
            domain=saved.get("domain", cls.domain),
        )

    def student_network(self) -> StudentNetwork:
        """The students' network (made when missing); the hub listens on its gateway and installs its egress policy."""
        from ..hub.startup import HubHost

        return HubHost().student_network(self.network, self.extra_labels, self.ports.hub)

    @property
    def gateway(self) -> str:
        return self.student_network().gateway

    def up(self) -> None:
        """Start whatever is not running yet."""
        hub_gateway = self.gateway
        self.save()
        if not self.oidc.pid():
            self.start_oidc()
        if not self.proxy.pid():
            self.start_proxy(hub_gateway)
        if not self.hub.pid():
            self.start_hub()

    def down(self) -> None:
        for process in (self.hub, self.proxy, self.oidc):
            process.stop()
        self.remove_mirror_proxy()

    def remove_mirror_proxy(self) -> None:
        """The mirror proxy of confined builds that teachlab-courses started goes with the lab."""
        from ..engine import DockerUnavailable, connect
        from ..images.mirror_proxy import remove_mirror_proxy

        try:
            remove_mirror_proxy(connect(), self.hub_settings().lab_id)
        except DockerUnavailable:
            pass
