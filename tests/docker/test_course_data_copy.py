"""A node's copy of a course's data volume follows the data node's files (spawner/hub/coursedata.py).

Both "nodes" are this machine's engine here, the data node's volume and the copy two volumes of it (the cluster
tests run the same between nodes); the files are made as instructors make them, by the student uid.
"""

from __future__ import annotations

import uuid

import pytest

from spawner.core.contract import IMAGE
from spawner.engine.volumes import files_digest
from spawner.hub.coursedata import MARKER, refresh_copy

pytestmark = [pytest.mark.docker]

MOUNT = "/v"


@pytest.fixture
def volume(docker_client, session_labels, base_image):
    made = []

    def make() -> str:
        name = f"data-test-{uuid.uuid4().hex[:8]}"
        docker_client.volumes.create(name, labels=session_labels)
        _run(docker_client, base_image, name, f"chown {IMAGE.uid}:{IMAGE.gid} {MOUNT}", user="0:0")
        made.append(name)
        return name

    yield make
    for name in made:
        docker_client.volumes.get(name).remove(force=True)


def _run(docker_client, image, volume: str, script: str, user: str = IMAGE.user) -> str:
    return docker_client.containers.run(
        image,
        ["sh", "-c", script],
        entrypoint=[],
        user=user,
        volumes={volume: {"bind": MOUNT}},
        remove=True,
        network_disabled=True,
    ).decode()


def test_a_copy_is_made_once_then_follows_the_instructors_changes(docker_client, base_image, volume, session_labels):
    source, copy = volume(), volume()
    _run(
        docker_client,
        base_image,
        source,
        f"mkdir {MOUNT}/week1 && echo a,b > {MOUNT}/week1/table.csv && echo old > {MOUNT}/old.txt",
    )

    assert refresh_copy(docker_client, docker_client, source, image=base_image, labels=session_labels, target_volume=copy)
    assert files_digest(docker_client, base_image, copy, session_labels) == files_digest(
        docker_client, base_image, source, session_labels
    )
    assert not refresh_copy(docker_client, docker_client, source, image=base_image, labels=session_labels, target_volume=copy)

    _run(
        docker_client,
        base_image,
        source,
        f"rm {MOUNT}/old.txt && echo c,d >> {MOUNT}/week1/table.csv && echo new > {MOUNT}/new.txt",
    )
    assert refresh_copy(docker_client, docker_client, source, image=base_image, labels=session_labels, target_volume=copy)

    listing = _run(docker_client, base_image, copy, f"cd {MOUNT} && ls -A && cat week1/table.csv && stat -c %u new.txt")
    assert listing.split() == [MARKER, "new.txt", "week1", "a,b", "c,d", str(IMAGE.uid)]
    assert files_digest(docker_client, base_image, copy, session_labels) == files_digest(
        docker_client, base_image, source, session_labels
    )
