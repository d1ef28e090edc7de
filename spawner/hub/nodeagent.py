"""The hub's side of the node agent (``spawner.node.agent``): start it, and run node operations in it.

A hub that runs in a container (the production stack, ``TEACHLAB_NODE_AGENT_IMAGE``) cannot install the
node's egress rules nor loop-mount work volumes where dockerd sees them. It keeps one agent container per
node, made from the hub's own image, and runs each operation there with ``docker exec``:

* ``network_mode=host``: the agent's iptables rules are the node's;
* the volume folder bound with ``rshared`` propagation: what the agent mounts appears on the node;
* ``/dev`` of the node, with only loop devices allowed (device cgroup rules), and the capabilities
  ``SYS_ADMIN`` (mount), ``NET_ADMIN`` and ``NET_RAW`` (iptables), ``DAC_OVERRIDE`` (files in students'
  filesystems); everything else dropped, a read-only root;
* ``apparmor=unconfined``: Docker's default AppArmor profile forbids ``mount`` even with ``SYS_ADMIN``;
* restarted by dockerd (``always``), so after a reboot it mounts every volume again before the hub asks.

A newer hub image replaces the agent at the hub's next start; mounts made by the old agent stay on the node.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors

from ..core.contract import Labels
from ..core.problems import TeachlabError
from ..node.agent import network_argument
from ..node.disks import DiskError, VolumeStore
from ..node.firewall import FirewallError, StudentNetwork

# SYS_ADMIN: mount; NET_ADMIN, NET_RAW: iptables; DAC_OVERRIDE: root works in filesystems a student owns (their
# root is the student's, so making a volume or removing one needs it).
AGENT_CAPABILITIES = ("SYS_ADMIN", "NET_ADMIN", "NET_RAW", "DAC_OVERRIDE")
LOOP_DEVICE_RULES = ("b 7:* rmw", "c 10:237 rmw")  # loop devices, and /dev/loop-control
START_TIMEOUT_SECONDS = 30


class NodeAgentError(TeachlabError):
    """The agent could not be started, or an operation in it failed."""


@dataclass
class NodeAgent:
    """The node agent container ``name`` of image ``image`` on the engine behind ``api`` (a docker APIClient)."""

    api: Any
    image: str
    name: str
    volume_root: Path
    labels: Mapping[str, str] = field(default_factory=dict)

    def command(self, *arguments: str) -> list[str]:
        return ["python", "-m", "spawner.node", "--volumes", str(self.volume_root), *arguments]

    def host_config_arguments(self) -> dict[str, Any]:
        """What ``create_host_config`` gets: the agent's privileges, and nothing more."""
        root = str(self.volume_root)
        return {
            "network_mode": "host",
            "binds": [f"{root}:{root}:rw,rshared", "/dev:/dev:rw"],
            "cap_drop": ["ALL"],
            "cap_add": list(AGENT_CAPABILITIES),
            "security_opt": ["apparmor=unconfined"],
            "device_cgroup_rules": list(LOOP_DEVICE_RULES),
            "read_only": True,
            "tmpfs": {"/tmp": "size=16m"},
            "restart_policy": {"Name": "always"},
            "log_config": {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}},
        }

    def ensure(self) -> None:
        """Make sure the agent runs from ``image``; replace one of another image or one that stopped."""
        try:
            found = self.api.inspect_container(self.name)
        except docker.errors.NotFound:
            found = None
        if found is not None:
            if found["Config"]["Image"] == self.image and found["State"].get("Running"):
                return
            self.api.remove_container(self.name, force=True)
        self.volume_root.mkdir(parents=True, exist_ok=True)
        created = self.api.create_container(
            self.image,
            name=self.name,
            command=self.command("serve"),
            labels={**self.labels, Labels.HELPER: "node-agent"},
            host_config=self.api.create_host_config(**self.host_config_arguments()),
        )
        self.api.start(created["Id"])
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            state = self.api.inspect_container(created["Id"])["State"]
            if state.get("Running"):
                return
            if state.get("Status") == "exited":
                break
            time.sleep(0.2)
        logs = self.api.logs(created["Id"], tail=5).decode("utf-8", "replace").strip().splitlines()
        raise NodeAgentError(f"the node agent {self.name} did not start: {logs[-1] if logs else 'no output'}")

    def started_at(self) -> str:
        """When the agent's container last started: a later time means the node rebooted or its engine restarted."""
        return self.api.inspect_container(self.name)["State"]["StartedAt"]

    def run(self, *arguments: str, error: type[TeachlabError] = NodeAgentError) -> Any:
        """Run one agent command; its JSON answer, or ``error`` with the agent's one-line reason."""
        try:
            return self._exec(arguments, error)
        except docker.errors.NotFound:
            self.ensure()  # removed by hand, or not yet made: start it and try once more
            return self._exec(arguments, error)

    def _exec(self, arguments: tuple[str, ...], error: type[TeachlabError]) -> Any:
        execution = self.api.exec_create(self.name, self.command(*arguments), stdout=True, stderr=True)
        stdout, stderr = self.api.exec_start(execution["Id"], demux=True)
        status = self.api.exec_inspect(execution["Id"])["ExitCode"]
        out = (stdout or b"").decode("utf-8", "replace").strip().splitlines()
        err = (stderr or b"").decode("utf-8", "replace").strip().splitlines()
        if status != 0:
            raise error(f"node agent: {(err or out or [f'exit status {status}'])[-1]}")
        return json.loads(out[-1]) if out else None

    def install_firewall(self, net: StudentNetwork) -> None:
        self.run("firewall-install", network_argument(net), error=FirewallError)

    def remove_firewall(self, net: StudentNetwork) -> None:
        self.run("firewall-remove", network_argument(net), error=FirewallError)


class AgentVolumeStore(VolumeStore):
    """``VolumeStore`` whose mounts and files are made by the node agent; paths and Docker options are the same."""

    def __init__(self, agent: NodeAgent):
        super().__init__(agent.volume_root)
        object.__setattr__(self, "agent", agent)

    def exists(self, name: str) -> bool:
        return bool(self.agent.run("volume-exists", name, error=DiskError))

    def is_mounted(self, name: str) -> bool:
        raise DiskError("the hub's container cannot see the node's mounts; ask ensure_mounted()")

    def create(self, name: str, size_bytes: int, *, uid: int, gid: int) -> None:
        self.agent.run("volume-create", name, str(size_bytes), str(uid), str(gid), error=DiskError)

    def ensure_mounted(self, name: str) -> None:
        self.agent.run("volume-mount", name, error=DiskError)

    def names(self) -> list[str]:
        return list(self.agent.run("volume-names", error=DiskError))

    def mount_all(self) -> list[str]:
        raise DiskError("the node agent mounts every volume itself when it starts")

    def used_and_size(self, name: str) -> tuple[int, int]:
        used, size = self.agent.run("volume-usage", name, error=DiskError)
        return used, size

    def size_bytes(self, name: str) -> int:
        return int(self.agent.run("volume-size", name, error=DiskError))

    def remove(self, name: str) -> None:
        self.agent.run("volume-remove", name, error=DiskError)
