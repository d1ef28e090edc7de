"""Copying a volume's files through Docker's archive API (spawner/engine/volumes.py), on the real engine.

Both ends are this machine's engine here (the cluster tests copy between two nodes' engines); the files are
made by the base image running as root, then handed to the student uid, as a student's work would be.
"""

from __future__ import annotations

import uuid

import pytest

from spawner.core.contract import IMAGE
from spawner.engine.volumes import FilesDigest, copy_files, files_digest, has_path, remove_path

pytestmark = [pytest.mark.docker]

MOUNT = "/v"
STUDENT = (IMAGE.uid, IMAGE.gid)


@pytest.fixture
def volumes(docker_client, session_labels):
    made = []

    def volume() -> str:
        name = f"copy-test-{uuid.uuid4().hex[:8]}"
        docker_client.volumes.create(name, labels=session_labels)
        made.append(name)
        return name

    yield volume
    for name in made:
        docker_client.volumes.get(name).remove(force=True)


def _run(docker_client, image, volume: str, script: str) -> str:
    return docker_client.containers.run(
        image,
        ["sh", "-c", script],
        entrypoint=[],
        user="0:0",
        volumes={volume: {"bind": MOUNT}},
        remove=True,
        network_disabled=True,
    ).decode()


FILES = (
    f"mkdir -p {MOUNT}/lab/data && head -c 2000000 /dev/urandom > {MOUNT}/lab/data/big.bin && "
    f"printf 'print(1)\\n' > {MOUNT}/notebook.py && ln {MOUNT}/notebook.py {MOUNT}/lab/hard && "
    f"ln -s ../notebook.py {MOUNT}/lab/link && chmod 600 {MOUNT}/notebook.py && "
    f"mkdir {MOUNT}/.teachlab-copy && chown -R {IMAGE.uid}:{IMAGE.gid} {MOUNT}"
)


def test_files_arrive_whole_with_owners_modes_and_links_and_the_digests_agree(docker_client, base_image, volumes, session_labels):
    source, target = volumes(), volumes()
    _run(docker_client, base_image, source, FILES)

    sent = copy_files(docker_client, source, docker_client, target, image=base_image, labels=session_labels, owner=STUDENT)

    assert sent == files_digest(docker_client, base_image, source, session_labels)
    assert sent == files_digest(docker_client, base_image, target, session_labels)
    listing = _run(
        docker_client,
        base_image,
        target,
        f"cd {MOUNT} && stat -c '%n %u %a %h' notebook.py lab/data/big.bin && readlink lab/link && ls -a",
    )
    assert f"notebook.py {IMAGE.uid} 600 2" in listing  # its hard link came too
    assert f"lab/data/big.bin {IMAGE.uid} 644 1" in listing
    assert "../notebook.py" in listing
    assert ".teachlab-copy" not in listing  # the platform's own top-level names stay behind


def test_a_copy_into_a_folder_keeps_what_the_target_holds(docker_client, base_image, volumes, session_labels):
    source, target = volumes(), volumes()
    _run(docker_client, base_image, source, FILES)
    _run(docker_client, base_image, target, f"echo newer > {MOUNT}/notebook.py && chown -R {IMAGE.uid} {MOUNT}")

    sent = copy_files(
        docker_client, source, docker_client, target, image=base_image, labels=session_labels, into="earlier-work", owner=STUDENT
    )

    assert sent == files_digest(docker_client, base_image, target, session_labels, under="earlier-work")
    contents = _run(
        docker_client,
        base_image,
        target,
        f"cat {MOUNT}/notebook.py {MOUNT}/earlier-work/lab/hard; stat -c %u {MOUNT}/earlier-work",
    )
    assert contents.split() == ["newer", "print(1)", str(IMAGE.uid)]


def test_one_changed_byte_changes_the_digest(docker_client, base_image, volumes, session_labels):
    source, target = volumes(), volumes()
    _run(docker_client, base_image, source, FILES)
    sent = copy_files(docker_client, source, docker_client, target, image=base_image, labels=session_labels, owner=STUDENT)

    _run(docker_client, base_image, target, f"printf X | dd of={MOUNT}/lab/data/big.bin bs=1 seek=1000 conv=notrunc 2>/dev/null")

    assert files_digest(docker_client, base_image, target, session_labels) != sent


def test_a_folder_is_found_by_its_stat_and_removed_as_its_owner(docker_client, base_image, volumes, session_labels):
    """What ``teachlab work move`` uses on the target: is a merge folder's name taken, and undo a copy into one."""
    source, target = volumes(), volumes()
    _run(docker_client, base_image, source, FILES)
    _run(docker_client, base_image, target, f"echo newer > {MOUNT}/notebook.py && chown -R {IMAGE.uid} {MOUNT}")
    counted = FilesDigest()
    copy_files(
        docker_client,
        source,
        docker_client,
        target,
        image=base_image,
        labels=session_labels,
        into="earlier",
        owner=STUDENT,
        digest=counted,
    )
    assert counted.files_bytes == 2_000_000 + len("print(1)\n")  # the hard link's bytes travel once
    assert has_path(docker_client, base_image, target, "earlier", session_labels)
    assert has_path(docker_client, base_image, target, "earlier/lab/data/big.bin", session_labels)
    assert not has_path(docker_client, base_image, target, "earlier-2", session_labels)

    remove_path(docker_client, base_image, target, "earlier", session_labels, user=IMAGE.user)

    assert not has_path(docker_client, base_image, target, "earlier", session_labels)
    assert _run(docker_client, base_image, target, f"ls -A {MOUNT}; cat {MOUNT}/notebook.py") == "notebook.py\nnewer\n"
    with pytest.raises(ValueError):
        remove_path(docker_client, base_image, target, "../x", session_labels, user=IMAGE.user)
