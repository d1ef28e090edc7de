"""This engine's swarm, as the deploy commands use it: secrets and configs, the stack, its services' state.

``docker stack deploy`` is the Docker command line's own (it turns a stack file into services), so the stack
is deployed and removed with ``docker``; everything else goes through docker-py. Images are never looked
up in a registry (``--resolve-image never``): they are built on this server.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from ..core.contract import Labels
from ..core.problems import TeachlabError

SERVICE_LABEL = "com.docker.swarm.service.name"
STACK_LABEL = "com.docker.stack.namespace"


@dataclass(frozen=True)
class ServiceState:
    name: str
    image: str
    desired: int
    running: int
    state: str  # the newest task's state: running, starting, preparing, failed, ...
    message: str  # its status message or error

    @property
    def ready(self) -> bool:
        return self.running == self.desired


class Swarm:
    """The swarm of the engine behind ``client``; ``stack`` names the lab's stack."""

    def __init__(self, client: docker.DockerClient, stack: str):
        self.client = client
        self.stack = stack

    def require_manager(self) -> None:
        info = self.client.info().get("Swarm", {})
        if info.get("LocalNodeState") != "active" or not info.get("ControlAvailable"):
            raise TeachlabError(
                "this server's Docker engine is not a swarm manager: run docker swarm init --advertise-addr <its address> "
                "(docs/admins.md), then try again"
            )

    def _ensure(self, collection, name: str, data: bytes) -> str:
        try:
            collection.get(name)
        except docker.errors.NotFound:
            collection.create(name=name, data=data, labels={Labels.STACK: self.stack})
        return name

    def ensure_secret(self, name: str, data: bytes) -> str:
        """The Docker secret ``name`` holding ``data`` (names carry the content's digest, so an existing one is right)."""
        return self._ensure(self.client.secrets, name, data)

    def ensure_config(self, name: str, data: bytes) -> str:
        return self._ensure(self.client.configs, name, data)

    def prune(self, keep: Iterable[str]) -> list[str]:
        """Remove this stack's secrets and configs that the deployed stack no longer uses; returns their names."""
        keep = set(keep)
        removed = []
        for collection in (self.client.secrets, self.client.configs):
            for item in collection.list(filters={"label": f"{Labels.STACK}={self.stack}"}):
                if item.name not in keep:
                    try:
                        item.remove()
                        removed.append(item.name)
                    except docker.errors.APIError:
                        pass  # still in use by a task that is going away: removed at the next deploy
        return removed

    def deploy(self, stack_file: Path) -> None:
        result = subprocess.run(
            ["docker", "stack", "deploy", "--resolve-image", "never", "--prune", "-c", str(stack_file), self.stack],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
            raise TeachlabError(f"docker stack deploy failed: {lines[-1]}")

    def remove(self, timeout: float = 120) -> None:
        """Remove the stack's services and wait until their containers are gone (volumes stay)."""
        subprocess.run(["docker", "stack", "rm", self.stack], capture_output=True, text=True, timeout=120)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.services() and not self.client.containers.list(
                all=True, filters={"label": f"{STACK_LABEL}={self.stack}"}
            ):
                return
            time.sleep(1)
        raise TeachlabError(f"the stack {self.stack} was not gone after {timeout:.0f} s: see docker stack ps {self.stack}")

    def services(self) -> list:
        return self.client.services.list(filters={"label": f"{STACK_LABEL}={self.stack}"})

    def service(self, name: str):
        """The stack's service ``name`` (e.g. ``hub``), or None."""
        found = [service for service in self.services() if service.name == f"{self.stack}_{name}"]
        return found[0] if found else None

    def states(self) -> list[ServiceState]:
        states = []
        for service in sorted(self.services(), key=lambda s: s.name):
            spec = service.attrs["Spec"]
            desired = spec.get("Mode", {}).get("Replicated", {}).get("Replicas", 1)
            tasks = sorted(service.tasks(), key=lambda task: task.get("CreatedAt", ""))
            running = sum(1 for task in tasks if task["Status"]["State"] == "running" and task["DesiredState"] == "running")
            newest = tasks[-1]["Status"] if tasks else {}
            states.append(
                ServiceState(
                    name=service.name.removeprefix(f"{self.stack}_"),
                    image=spec["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0],
                    desired=desired,
                    running=running,
                    state=newest.get("State", "none"),
                    message=newest.get("Err") or newest.get("Message", ""),
                )
            )
        return states

    def wait_until_ready(self, timeout: float = 300, expected: Mapping[str, int] | None = None) -> list[ServiceState]:
        """Wait until every service runs as many healthy tasks as it should (a task with a health check is
        ``running`` only once healthy); TeachlabError names the services that did not."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.states()
            ready = states and all(state.ready for state in states)
            if expected is not None:
                ready = ready and all(
                    any(state.name == name and state.running == count for state in states) for name, count in expected.items()
                )
            if ready:
                return states
            if time.monotonic() > deadline:
                waiting = [f"{s.name} ({s.running}/{s.desired}, {s.state}: {s.message})" for s in states if not s.ready]
                raise TeachlabError(f"not ready after {timeout:.0f} s: {', '.join(waiting) or 'no services'}")
            time.sleep(2)

    def scale(self, name: str, replicas: int, timeout: float = 120) -> None:
        """Run ``replicas`` tasks of a service and wait until it does (0: its container is gone)."""
        service = self.service(name)
        if service is None:
            raise TeachlabError(f"the stack has no {name} service: run teachlab deploy up")
        service.scale(replicas)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running = self.task_containers(name)
            if (replicas == 0 and not running) or (replicas > 0 and self._running_tasks(name) >= replicas):
                return
            time.sleep(1)
        raise TeachlabError(f"{name} did not reach {replicas} task(s) within {timeout:.0f} s")

    def _running_tasks(self, name: str) -> int:
        service = self.service(name)
        tasks = service.tasks(filters={"desired-state": "running"}) if service else []
        return sum(1 for task in tasks if task["Status"]["State"] == "running")

    def task_containers(self, name: str) -> list:
        """The containers of a service's tasks on this node (running ones)."""
        return self.client.containers.list(filters={"label": f"{SERVICE_LABEL}={self.stack}_{name}"})

    def task_container(self, name: str):
        containers = self.task_containers(name)
        if not containers:
            raise TeachlabError(f"no {name} task runs on this server: see teachlab deploy status")
        return containers[0]
