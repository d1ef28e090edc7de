"""``teachlab work move``'s glue: a student's work volume copied from one node's engine to another's, checked, and
only then removed from the first.

The decisions are ``spawner.cluster.workmove``'s. Here: the student's volumes and running containers are found on
each given engine by their labels; each node's agent (``spawner.hub.nodeagent``, found by its helper label) makes,
measures and removes the sized filesystems; ``spawner.engine.volumes`` streams the files from engine to engine and
reads them back on the target for the digest. A failure after the target changed removes what this move made there
(the new volume and its filesystem, or the folder), and the source stays as it was.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import docker.errors
import requests

from ..cluster.workmove import (
    HeldWork,
    MoveDone,
    MoveRefused,
    choose_source,
    merge_folder,
    refuse_unless_fits,
    refuse_while_running,
)
from ..core.contract import IMAGE, Labels
from ..core.naming import LabNames
from ..engine.volumes import FilesDigest, copy_files, files_digest, has_path, remove_path
from ..hub.nodeagent import AgentVolumeStore, NodeAgent

UNREACHABLE = (requests.exceptions.ConnectionError, requests.exceptions.Timeout, docker.errors.DockerException)
AGENT_HELPER = "node-agent"


@dataclass(frozen=True)
class NodeSide:
    """One node of the move: its engine, and its agent's store of sized volumes."""

    node: str
    client: Any  # docker.DockerClient
    store: AgentVolumeStore
    agent_image: str


def _student_filter(user: str, course: str) -> dict[str, list[str]]:
    return {"label": [f"{Labels.USER}={user}", f"{Labels.COURSE}={course}"]}


def _survey(engines: Mapping[str, Any], user: str, course: str) -> tuple[list[HeldWork], dict[str, list[str]]]:
    """The student's work volumes for the course on every engine, and their running containers; every engine must
    answer (one that does not might hold the work or a running server)."""
    held, running = [], {}
    for node, client in engines.items():
        try:
            volumes = client.api.volumes(filters=_student_filter(user, course)).get("Volumes") or []
            containers = client.api.containers(filters={**_student_filter(user, course), "status": ["running"]})
        except UNREACHABLE as exc:
            raise MoveRefused(
                f"the engine of {node} does not answer ({_first_line(exc)}); bring it up, or leave it out"
            ) from None
        held.extend(HeldWork(node, volume["Name"]) for volume in volumes)
        running[node] = sorted(name.lstrip("/") for container in containers for name in container["Names"][:1])
    return held, running


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:200]


def node_side(node: str, client: Any, volume: str, *, like: NodeSide | None = None) -> NodeSide:
    """The node's agent, found by its helper label (the one of the volume's lab when several labs share the node);
    its volume folder is the one in its command. A node that never ran a server of the lab has none: with ``like``
    (the source's side) one is started there as the hub would start it, from the same image, folder and labels."""
    agents = client.api.containers(all=True, filters={"label": f"{Labels.HELPER}={AGENT_HELPER}"})
    lab_agent = LabNames(volume.split("-", 1)[0]).node_agent()
    named = [agent for agent in agents if f"/{lab_agent}" in agent["Names"]]
    chosen = named or agents
    if not chosen and like is not None:
        return _started_like(node, client, like)
    if len(chosen) != 1:
        found = ", ".join(agent["Names"][0].lstrip("/") for agent in agents) or "none"
        raise MoveRefused(f"{node} has no single node agent of this lab (found: {found}); start a server there first")
    attrs = client.api.inspect_container(chosen[0]["Id"])
    if not attrs["State"].get("Running"):
        raise MoveRefused(f"the node agent on {node} is not running ({attrs['State'].get('Status')}); start it first")
    command = attrs["Config"]["Cmd"] or []
    if "--volumes" not in command[:-1]:
        raise MoveRefused(f"the node agent on {node} was started without --volumes; it is not one this release made")
    agent = NodeAgent(
        client.api,
        image=attrs["Config"]["Image"],
        name=attrs["Name"].lstrip("/"),
        volume_root=Path(command[command.index("--volumes") + 1]),
        labels={key: value for key, value in attrs["Config"]["Labels"].items() if key != Labels.HELPER},
    )
    return NodeSide(node, client, AgentVolumeStore(agent), agent.image)


def _started_like(node: str, client: Any, like: NodeSide) -> NodeSide:
    template = like.store.agent
    if not _has_image(client, template.image):
        raise MoveRefused(f"{node} has no node agent and not its image {template.image}; start a server there first")
    agent = NodeAgent(
        client.api, image=template.image, name=template.name, volume_root=template.volume_root, labels=template.labels
    )
    agent.ensure()
    return NodeSide(node, client, AgentVolumeStore(agent), agent.image)


def _has_image(client: Any, image: str) -> bool:
    try:
        client.api.inspect_image(image)
        return True
    except docker.errors.ImageNotFound:
        return False


def copy_image(source: NodeSide, target: NodeSide) -> str:
    """The image of the copy's helper containers, which both engines must have: their agents' (the same one unless a
    node missed an upgrade)."""
    for image in dict.fromkeys((target.agent_image, source.agent_image)):
        if _has_image(source.client, image) and _has_image(target.client, image):
            return image
    raise MoveRefused(
        f"the node agents of {source.node} and {target.node} run images that are not on both nodes; start a server on "
        "each with the current hub first"
    )


def move_work(
    engines: Mapping[str, Any],
    *,
    user: str,
    course: str,
    target: str,
    source: str | None = None,
    keep_source: bool = False,
    today: Callable[[], date] = date.today,
    clock: Callable[[], float] = time.monotonic,
) -> MoveDone:
    """Move ``user``'s work for ``course`` to ``target`` (all nodes' engines in ``engines``); see the module."""
    began = clock()
    if target not in engines:
        raise MoveRefused(f"--to {target}: give its engine too, with --engine {target}=URL")
    if source is not None and source not in engines:
        raise MoveRefused(f"--from {source}: give its engine too, with --engine {source}=URL")
    held, running = _survey(engines, user, course)
    refuse_while_running(running, user=user, course=course)
    work = choose_source(held, user=user, course=course, target=target, source=source)
    name = work.volume
    try:
        from_side = node_side(work.node, engines[work.node], name)
        to_side = node_side(target, engines[target], name, like=from_side)
        image = copy_image(from_side, to_side)
        source_labels = engines[work.node].api.inspect_volume(name).get("Labels") or {}
        _mount_sized(from_side, name)
        used_bytes, _ = from_side.store.used_and_size(name)
        size_bytes = from_side.store.size_bytes(name)
        helper_labels = {key: value for key, value in source_labels.items() if key not in (Labels.USER, Labels.COURSE)}
        try:
            engines[target].api.inspect_volume(name)
            target_holds_work = True
        except docker.errors.NotFound:
            target_holds_work = False
        if target_holds_work:
            folder = _prepare_merge(to_side, name, image, helper_labels, work.node, used_bytes, today())
        else:
            folder = ""
            _make_volume(to_side, name, size_bytes, source_labels)
    except UNREACHABLE as exc:
        raise MoveRefused(f"a node's engine failed while preparing the move ({_first_line(exc)}); nothing was changed") from None
    counted = FilesDigest()
    try:
        sent = copy_files(
            engines[work.node],
            name,
            engines[target],
            name,
            image=image,
            labels=helper_labels,
            into=folder,
            owner=(IMAGE.uid, IMAGE.gid),
            digest=counted,
        )
        arrived = files_digest(engines[target], image, name, helper_labels, under=folder)
        if arrived != sent:
            raise MoveRefused(f"the files that arrived on {target} differ from those sent from {work.node}")
    except BaseException as exc:
        undone = _undo(to_side, name, image, helper_labels, folder)
        if isinstance(exc, MoveRefused):
            raise MoveRefused(f"{exc}; {undone}, the work on {work.node} is untouched") from None
        if isinstance(exc, Exception):
            raise MoveRefused(f"copying failed ({_first_line(exc)}); {undone}, the work on {work.node} is untouched") from None
        raise
    kept = "--keep-source" if keep_source else _remove_source(from_side, name)
    return MoveDone(user, course, work.node, target, counted.files_bytes, folder, clock() - began, kept)


def _prepare_merge(
    side: NodeSide, name: str, image: str, labels: Mapping[str, str], source_node: str, used_bytes: int, today: date
) -> str:
    _mount_sized(side, name)
    target_used, target_total = side.store.used_and_size(name)
    refuse_unless_fits(used_bytes, target_total - target_used, source=source_node, target=side.node)
    return merge_folder(source_node, lambda folder: has_path(side.client, image, name, folder, labels), today)


def _mount_sized(side: NodeSide, name: str) -> None:
    """Make sure the node's sized filesystem of ``name`` is mounted; one line when it has none."""
    if not side.store.exists(name):
        raise MoveRefused(f"{name} on {side.node} is not a size-limited volume (an earlier release's); copy it by hand")
    side.store.ensure_mounted(name)


def _make_volume(side: NodeSide, name: str, size_bytes: int, labels: Mapping[str, str]) -> None:
    """A sized volume of the source's size and labels on the target, as the hub makes one (``spawner.hub.storage``)."""
    if side.store.exists(name):
        raise MoveRefused(
            f"{side.node} has a filesystem for {name} but no Docker volume of it (left from an earlier failure?); "
            f"remove {side.store.image(name)} there first"
        )
    side.store.create(name, size_bytes, uid=IMAGE.uid, gid=IMAGE.gid)
    try:
        side.client.api.create_volume(name, driver="local", driver_opts=side.store.driver_options(name), labels=dict(labels))
    except BaseException:
        side.store.remove(name)
        raise


def _undo(side: NodeSide, name: str, image: str, labels: Mapping[str, str], folder: str) -> str:
    """Remove what the move made on the target; says what was removed (or what is left for the admin)."""
    try:
        if folder:
            remove_path(side.client, image, name, folder, labels, user=IMAGE.user)
            return f"{folder} was removed from {side.node} again"
        side.client.api.remove_volume(name)
        side.store.remove(name)
        return f"the new volume on {side.node} was removed again"
    except Exception as exc:  # noqa: BLE001 - the admin gets the original failure and what is left
        left = f"{folder}/ in {name}" if folder else f"the volume {name}"
        return f"{left} on {side.node} could not be removed ({_first_line(exc)}): remove it by hand"


def _remove_source(side: NodeSide, name: str) -> str:
    """Remove the moved volume from the source; why it stays when it cannot be removed ("" once removed)."""
    try:
        side.client.api.remove_volume(name)
    except docker.errors.APIError as exc:
        return f"its Docker volume was not removed: {_first_line(exc)}"
    try:
        side.store.remove(name)
    except Exception as exc:  # noqa: BLE001 - the move is done; the admin learns what is left
        return f"its filesystem {side.store.image(name)} was not removed: {_first_line(exc)}"
    return ""
