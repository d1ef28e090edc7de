"""A volume's files as one tar stream, and back: for backups, end-of-term archives and students' downloads.

Docker copies the files itself (``GET``/``PUT /containers/{id}/archive``) through a helper container that is
created with the volume mounted and never started: nothing from the volume runs, owners and modes are kept,
and no tar program is needed in any image. Sized work volumes must be mounted on the node first
(``VolumeStore.ensure_mounted``); an unmounted one shows as an empty folder.
"""

from __future__ import annotations

import tarfile
import time
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import IO, Any

import docker

from ..core.contract import Labels

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


def write_tar(client: docker.DockerClient, image: str, volume: str, target: IO[bytes], labels: Mapping[str, str]) -> None:
    for chunk in tar_chunks(client, image, volume, labels):
        target.write(chunk)


def restore_tar(client: docker.DockerClient, image: str, volume: str, source: IO[bytes], labels: Mapping[str, str]) -> None:
    """Put a tar made by ``tar_chunks`` back into a (new, empty) volume."""
    with helper(client, image, volume, writable=True, labels=labels) as container:
        if not container.put_archive(MOUNT, source):
            raise OSError(f"docker did not accept the files of {volume}")


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
