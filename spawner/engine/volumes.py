"""A volume's files as one tar stream, and back: for backups, end-of-term archives, students' downloads, and
copies from one node's engine to another's (course data on every node, a student's work moved to another node).

Docker copies the files itself (``GET``/``PUT /containers/{id}/archive``) through a helper container that is
created with the volume mounted and never started: nothing from the volume runs, owners and modes are kept,
and no tar program is needed in any image. Sized work volumes must be mounted on the node first
(``VolumeStore.ensure_mounted``); an unmounted one shows as an empty folder.
"""

from __future__ import annotations

import hashlib
import tarfile
import time
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import IO, Any

import docker
import docker.errors

from ..core.contract import Labels
from ..core.hardening import HELPER_HARDENING

MOUNT = "/teachlab-volume"


@contextmanager
def helper(client: docker.DockerClient, image: str, volume: str, *, writable: bool, labels: Mapping[str, str]) -> Iterator[Any]:
    container = client.containers.create(
        image,
        command=["true"],
        entrypoint=[],
        network_disabled=True,
        volumes={volume: {"bind": MOUNT, "mode": "rw" if writable else "ro"}},
        labels={**labels, Labels.HELPER: "volume-copy"},
    )
    try:
        yield container
    finally:
        container.remove(force=True)


def tar_chunks(client: docker.DockerClient, image: str, volume: str, labels: Mapping[str, str]) -> Iterator[bytes]:
    """The volume's files as a tar stream (members ``./...``, owners and modes kept), chunk by chunk."""
    with helper(client, image, volume, writable=False, labels=labels) as container:
        stream, _ = container.get_archive(f"{MOUNT}/.")
        yield from stream


def read_top_level_file(
    client: docker.DockerClient, image: str, volume: str, name: str, labels: Mapping[str, str]
) -> bytes | None:
    """The bytes of one small file at a volume's top level (None when it is not there): only that file travels."""
    with helper(client, image, volume, writable=False, labels=labels) as container:
        try:
            stream, _ = container.get_archive(f"{MOUNT}/{name}")
        except docker.errors.NotFound:
            return None
        with tarfile.open(fileobj=_IteratorFile(stream), mode="r|") as archive:
            for member in archive:
                return archive.extractfile(member).read() if member.isfile() else None
    return None


def write_tar(client: docker.DockerClient, image: str, volume: str, target: IO[bytes], labels: Mapping[str, str]) -> None:
    for chunk in tar_chunks(client, image, volume, labels):
        target.write(chunk)


def restore_tar(
    client: docker.DockerClient, image: str, volume: str, source: IO[bytes] | Iterator[bytes], labels: Mapping[str, str]
) -> None:
    """Put a tar made by ``tar_chunks`` back into a volume (a file, or an iterator of chunks)."""
    with helper(client, image, volume, writable=True, labels=labels) as container:
        if not container.put_archive(MOUNT, source):
            raise OSError(f"docker did not accept the files of {volume}")


def has_path(client: docker.DockerClient, image: str, volume: str, path: str, labels: Mapping[str, str]) -> bool:
    """Whether ``path`` (relative to the volume's top) exists in the volume; asks the engine for its stat only."""
    with helper(client, image, volume, writable=False, labels=labels) as container:
        api = client.api
        response = api.head(api._url("/containers/{0}/archive", container.id), params={"path": f"{MOUNT}/{path.strip('/')}"})
        if response.status_code == 404:
            return False
        api._raise_for_status(response)
        return True


# Helpers that run a command in a volume: as the files' owner, so no capability at all, and without network.
VOLUME_HELPER_HARDENING = replace(HELPER_HARDENING, capabilities_kept=())


def run_in_volume(
    client: docker.DockerClient,
    image: str,
    volume: str,
    command: list[str],
    *,
    writable: bool,
    user: str,
    labels: Mapping[str, str],
    purpose: str,
) -> str:
    """Run ``command`` in a helper container with the volume at ``MOUNT``; its output, or OSError with its last line."""
    container = client.containers.create(
        image,
        command=command,
        entrypoint=[],
        user=user,
        network_disabled=True,
        volumes={volume: {"bind": MOUNT, "mode": "rw" if writable else "ro"}},
        labels={**labels, Labels.HELPER: purpose},
        **VOLUME_HELPER_HARDENING.docker_py_kwargs(),
    )
    try:
        container.start()
        status = container.wait(timeout=300).get("StatusCode")
        output = container.logs().decode("utf-8", "replace").strip()
        if status != 0:
            lines = output.splitlines()
            raise OSError(f"{purpose} in {volume} failed: {lines[-1] if lines else f'exit status {status}'}")
        return output
    finally:
        container.remove(force=True)


def remove_path(client: docker.DockerClient, image: str, volume: str, path: str, labels: Mapping[str, str], *, user: str) -> None:
    """Remove ``path`` (a folder a copy made, relative to the volume's top) as ``user``, the files' owner; no network."""
    if not path.strip("/") or ".." in path.split("/"):
        raise ValueError(f"not a path inside the volume: {path!r}")
    command = ["rm", "-rf", "--", f"{MOUNT}/{path.strip('/')}"]
    run_in_volume(client, image, volume, command, writable=True, user=user, labels=labels, purpose="volume-copy")


# Names at a volume's top level that belong to the platform, not to the files copied (a copy's marker, its staging).
PLATFORM_PREFIX = ".teachlab-"


def _files_of(tar_stream: Iterator[bytes]) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
    """The members of a ``tar_chunks`` stream, named relative to the volume (``a/b``), without the root itself and
    without the platform's own top-level names."""
    with tarfile.open(fileobj=_IteratorFile(tar_stream), mode="r|") as archive:
        for member in archive:
            name = member.name.removeprefix("./").strip("/")
            if name in ("", ".") or name.split("/", 1)[0].startswith(PLATFORM_PREFIX):
                continue
            member.name = name
            if member.islnk():
                member.linkname = member.linkname.removeprefix("./")
            yield member, archive


class FilesDigest:
    """A digest of files as they travel: names, kinds, modes, owners, sizes, link targets, the files' bytes and
    modification times (seconds). The same files give the same digest on any node; a lost or changed byte does
    not."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.files_bytes = 0  # the files' bytes seen, for people (a filesystem's "used" counts its journal too)

    def member(self, member: tarfile.TarInfo) -> None:
        mtime = int(member.mtime) if member.isfile() else 0  # a folder's time changes as files land in it
        fields = (member.name, member.type, member.mode & 0o7777, member.uid, member.gid, member.size, member.linkname, mtime)
        self._hash.update(repr(fields).encode())

    def data(self, block: bytes) -> None:
        self._hash.update(block)
        self.files_bytes += len(block)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def files_digest(client: docker.DockerClient, image: str, volume: str, labels: Mapping[str, str], *, under: str = "") -> str:
    """The ``FilesDigest`` of a volume's files (of its folder ``under`` when given), read through its engine."""
    digest = FilesDigest()
    prefix = f"{under.strip('/')}/" if under else ""
    for member, archive in _files_of(tar_chunks(client, image, volume, labels)):
        if prefix and not member.name.startswith(prefix):
            continue
        member.name = member.name.removeprefix(prefix)
        if member.islnk():
            member.linkname = member.linkname.removeprefix(prefix)
        digest.member(member)
        if member.isfile():
            source = archive.extractfile(member)
            while block := source.read(1 << 16):
                digest.data(block)
    return digest.hexdigest()


def _placed_under(tar_stream: Iterator[bytes], folder: str, owner: tuple[int, int], digest: FilesDigest) -> Iterator[bytes]:
    """The stream's files again as a tar stream, each one under ``folder`` (made first, owned by ``owner``);
    ``digest`` sees each file as it passes."""
    output = ChunkQueue()
    with tarfile.open(fileobj=output, mode="w|", format=tarfile.PAX_FORMAT) as placed:
        if folder:
            root = tarfile.TarInfo(folder)
            root.type, root.mode, (root.uid, root.gid), root.mtime = tarfile.DIRTYPE, 0o755, owner, int(time.time())
            placed.addfile(root)
        for member, archive in _files_of(tar_stream):
            digest.member(member)
            source = archive.extractfile(member) if member.isfile() else None
            if folder:
                member.name = f"{folder}/{member.name}"
                if member.islnk():
                    member.linkname = f"{folder}/{member.linkname}"
            placed.addfile(member, _Digested(source, digest) if source else None)
            yield from _some(output.take())
    yield from _some(output.take())


class _Digested:
    """A member's file whose bytes ``digest`` sees as tarfile reads them."""

    def __init__(self, source: IO[bytes], digest: FilesDigest):
        self._source, self._digest = source, digest

    def read(self, size: int = -1) -> bytes:
        block = self._source.read(size)
        self._digest.data(block)
        return block


def copy_files(
    source: docker.DockerClient,
    source_volume: str,
    target: docker.DockerClient,
    target_volume: str,
    *,
    image: str,
    labels: Mapping[str, str],
    into: str = "",
    owner: tuple[int, int],
    digest: FilesDigest | None = None,
) -> str:
    """Copy a volume's files into another volume, on another engine or the same one, streamed from engine to engine
    (nothing is kept here); under the folder ``into`` of the target when given, else at its top. Owners, modes and
    times are kept. Returns the ``FilesDigest`` of what was sent, for ``files_digest`` of the target to confirm;
    pass ``digest`` to read what else it counted (``files_bytes``)."""
    digest = digest if digest is not None else FilesDigest()
    stream = _placed_under(tar_chunks(source, image, source_volume, labels), into.strip("/"), owner, digest)
    restore_tar(target, image, target_volume, stream, labels)  # an iterator: sent chunked, as it comes
    return digest.hexdigest()


class ChunkQueue:
    """A write-only file whose writes are handed out as chunks (zipfile writes a zip into it as a stream)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.offset = 0

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        self.offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self.offset

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        """Everything written since the last take."""
        data, self.chunks = b"".join(self.chunks), []
        return data


def zip_chunks(tar_stream: Iterator[bytes], folder: str) -> Iterator[bytes]:
    """Turn a tar stream into a zip stream (everything under ``folder/``) without holding either in memory or
    on disk: what a student downloads opens with a double click on every desktop."""
    reader = _IteratorFile(tar_stream)
    output = ChunkQueue()
    with tarfile.open(fileobj=reader, mode="r|") as archive, zipfile.ZipFile(output, "w", zipfile.ZIP_DEFLATED) as zipped:
        for member in archive:
            name = member.name.removeprefix("./").strip("/")
            if not name or not (member.isfile() or member.isdir()):
                continue  # the root itself, links, devices
            info = zipfile.ZipInfo(f"{folder}/{name}{'/' if member.isdir() else ''}", _date_time(member.mtime))
            info.external_attr = (member.mode & 0o777) << 16
            if member.isdir():
                zipped.writestr(info, b"")
                continue
            info.compress_type = zipfile.ZIP_DEFLATED
            source = archive.extractfile(member)
            with zipped.open(info, "w", force_zip64=member.size > 2**31) as target:
                while block := source.read(1 << 16):
                    target.write(block)
                    if output.offset:
                        yield from _some(output.take())
            yield from _some(output.take())
    yield from _some(output.take())


def _some(data: bytes) -> Iterator[bytes]:
    if data:
        yield data


def _date_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    stamp = time.gmtime(max(mtime, 315532800))  # zip cannot hold dates before 1980
    return stamp[:6]


class _IteratorFile:
    """A read-only file over an iterator of byte chunks (tarfile reads the Docker stream through it)."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = iter(chunks)
        self._buffer = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            try:
                self._buffer += next(self._chunks)
            except StopIteration:
                break
        if size < 0:
            data, self._buffer = self._buffer, b""
        else:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data
