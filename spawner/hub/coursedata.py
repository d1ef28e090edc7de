"""Course data on every node of a swarm: one node holds each data volume as instructors write it (the lab's
``course_data_node``), every other node keeps a copy that a server's start brings up to date.

A start on another node compares the data node's *listing fingerprint* (every name, kind, size, mode, owner and
modification time, computed there by a short helper as the student uid, without network) with the fingerprint
the node's copy was made from (the marker file ``.teachlab-copy`` in the copy). When they differ, the files are
streamed from engine to engine (``spawner.engine.volumes.copy_files``) into a staging folder of the copy, and one
helper on the node then replaces the copy's files with them and writes the new marker: students already running
there see the new files at once, as they see an instructor's writes on one server. Nothing runs from the data
itself, and the helpers are confined like the platform's others.
"""

from __future__ import annotations

from collections.abc import Mapping

import docker
import docker.errors

from ..core.contract import IMAGE
from ..engine.volumes import MOUNT, PLATFORM_PREFIX, copy_files, read_top_level_file, run_in_volume

MARKER = f"{PLATFORM_PREFIX}copy"
STAGING = f"{PLATFORM_PREFIX}incoming"

_LISTING = (
    f"cd {MOUNT} && find . -mindepth 1 ! -path './{PLATFORM_PREFIX}*' "
    "-printf '%P\\t%y\\t%s\\t%m\\t%U\\t%G\\t%T@\\t%l\\n' | LC_ALL=C sort | sha256sum"
)


def _helper_run(
    engine: docker.DockerClient, image: str, volume: str, script: str, *, writable: bool, labels: Mapping[str, str]
) -> str:
    return run_in_volume(
        engine, image, volume, ["sh", "-c", script], writable=writable, user=IMAGE.user, labels=labels, purpose="course-data"
    )


def listing_fingerprint(engine: docker.DockerClient, image: str, volume: str, labels: Mapping[str, str]) -> str:
    """The fingerprint of a data volume's files as they are now (the platform's own top-level names left out)."""
    return _helper_run(engine, image, volume, _LISTING, writable=False, labels=labels).split()[0]


def copy_fingerprint(engine: docker.DockerClient, image: str, volume: str, labels: Mapping[str, str]) -> str | None:
    """The fingerprint the node's copy was made from; None for a copy never made (a new, empty volume)."""
    marker = read_top_level_file(engine, image, volume, MARKER, labels)
    return marker.decode("ascii", "replace").strip() if marker is not None else None


def refresh_copy(
    source: docker.DockerClient,
    target: docker.DockerClient,
    volume: str,
    *,
    image: str,
    labels: Mapping[str, str],
    target_volume: str | None = None,
) -> bool:
    """Bring the target node's copy of ``volume`` (named the same there, unless ``target_volume`` says otherwise) up
    to the source's files; True when files were copied."""
    copy = target_volume or volume
    try:
        source.volumes.get(volume)
    except docker.errors.NotFound:
        return False  # no server ran on the data node yet: nothing written, and nothing made there by a copy
    wanted = listing_fingerprint(source, image, volume, labels)
    if copy_fingerprint(target, image, copy, labels) == wanted:
        return False
    staging = f"{STAGING}-{wanted[:16]}"
    copy_files(source, volume, target, copy, image=image, labels=labels, into=staging, owner=(IMAGE.uid, IMAGE.gid))
    swap = (
        f"cd {MOUNT} && find . -mindepth 1 -maxdepth 1 ! -name '{staging}' -exec rm -rf {{}} + && "
        f"find '{staging}' -mindepth 1 -maxdepth 1 -exec mv -t . {{}} + && rmdir '{staging}' && "
        f"printf '%s\\n' '{wanted}' > {MARKER}"
    )
    _helper_run(target, image, copy, swap, writable=True, labels=labels)
    return True
