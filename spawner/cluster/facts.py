"""The swarm's facts as ``placement`` reads them: Docker's node and container objects (``attrs``) to plain values.

Pure: it takes the dictionaries docker-py returns (``client.nodes.list()[i].attrs``,
``client.containers.list()[i].attrs``) and imports no docker, so each rule is tested on recorded shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..core.contract import Labels
from ..core.problems import TeachlabError
from .placement import ROLES, Node, PlacedServer

# Containers that hold their reservation: created and starting ones too (a spawn in progress).
RESERVING_STATES = ("created", "running", "restarting", "paused")


def node_from_swarm(attrs: Mapping[str, Any]) -> Node:
    """A swarm node: its hostname, the role and GPUs an admin labelled it with, what it may give out, whether
    it takes new servers (status ready and availability active). A missing or wrong label is a TeachlabError
    that says which command fixes it."""
    description = attrs.get("Description", {})
    spec = attrs.get("Spec", {})
    name = description.get("Hostname") or attrs.get("ID", "?")
    labels = spec.get("Labels") or {}
    role = labels.get(Labels.NODE_ROLE, "cpu")
    if role not in ROLES:
        raise TeachlabError(
            f"swarm node {name}: label {Labels.NODE_ROLE}={role!r} is not a role; "
            f"run docker node update --label-add {Labels.NODE_ROLE}=cpu (or gpu) {name}"
        )
    devices = tuple(device.strip() for device in labels.get(Labels.NODE_GPUS, "").split(",") if device.strip())
    if devices and role != "gpu":
        raise TeachlabError(
            f"swarm node {name} is labelled with GPUs ({Labels.NODE_GPUS}) but not as a gpu node; "
            f"run docker node update --label-add {Labels.NODE_ROLE}=gpu {name}"
        )
    resources = description.get("Resources", {})
    ready = attrs.get("Status", {}).get("State") == "ready" and spec.get("Availability") == "active"
    try:
        return Node(
            name=name,
            role=role,
            cpus=resources.get("NanoCPUs", 0) / 1e9,
            memory_bytes=resources.get("MemoryBytes", 0),
            gpu_devices=devices,
            ready=ready,
        )
    except ValueError as exc:
        raise TeachlabError(f"swarm node {name}: {exc}") from None


def node_address(attrs: Mapping[str, Any]) -> str:
    """The address a swarm node is reached at (its engine, its servers' published ports): ``Status.Addr``, or the
    manager's advertised address where a manager reports ``0.0.0.0``. TeachlabError when the node has none."""
    address = attrs.get("Status", {}).get("Addr") or ""
    if address in ("", "0.0.0.0"):
        manager = attrs.get("ManagerStatus", {}).get("Addr") or ""
        address = manager.rsplit(":", 1)[0] if manager else ""
    if not address:
        name = attrs.get("Description", {}).get("Hostname") or attrs.get("ID", "?")
        raise TeachlabError(f"swarm node {name} reports no address; check that it joined with --advertise-addr")
    return address


def placed_from_container(attrs: Mapping[str, Any], node: str) -> PlacedServer | None:
    """A student's container on ``node`` and what it reserves (its CPU and memory limits); ``None`` for a
    container that is no student's server or holds nothing now (exited)."""
    labels = attrs.get("Config", {}).get("Labels") or {}
    if Labels.USER not in labels or Labels.SERVER not in labels or labels.get(Labels.HELPER):
        return None
    if attrs.get("State", {}).get("Status") not in RESERVING_STATES:
        return None
    host_config = attrs.get("HostConfig", {})
    return PlacedServer(
        node=node,
        username=labels[Labels.USER],
        server_name=labels[Labels.SERVER],
        cpus=_cpu_limit(host_config),
        memory_bytes=host_config.get("Memory") or 0,
    )


def _cpu_limit(host_config: Mapping[str, Any]) -> float:
    """The container's CPU limit: ``NanoCpus`` (``--cpus``), or ``CpuQuota`` over ``CpuPeriod`` (how the lab's
    container spec sets it); 0 when it has none."""
    if host_config.get("NanoCpus"):
        return host_config["NanoCpus"] / 1e9
    quota, period = host_config.get("CpuQuota") or 0, host_config.get("CpuPeriod") or 0
    return quota / period if quota > 0 and period > 0 else 0.0
