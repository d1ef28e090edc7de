"""Into the student's own container through the Docker API: exec as the student uid, nothing else.

Every process the gateway starts for a session, an SFTP subsystem or a forward is a ``docker exec`` in
the container of (user, course), found by its name and checked by its labels (user, course, this lab),
as the image contract's uid, in the work folder. A forward's connection is opened by a small relay
process inside the container, so it lives in the container's own network namespace: 127.0.0.1 is the
container's loopback, and the container's network rules apply to it as to anything the student runs.

The exec stream is the socket docker-py hijacks from the engine, driven by asyncio. Without a pty the
engine multiplexes stdout and stderr in frames (8-byte header: stream, 0, 0, 0, big-endian length).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import docker
import docker.errors

from ..core import naming
from ..core.blocking import SSH_DOCKER, run_blocking
from ..core.contract import IMAGE, Labels

STDOUT, STDERR = 1, 2
EXIT_POLL_SECONDS = 0.05
EXIT_WAIT_SECONDS = 10.0
RELAY_READY = b"teachlab-relay: connected\n"
# Runs inside the container (its Python 3.9): connect, say so on stderr, then copy bytes both ways.
RELAY_SCRIPT = r"""
import os, socket, sys, threading
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
except OSError as e:
    sys.stderr.write("teachlab-relay: %s\n" % (e.strerror or e)); sys.exit(1)
s.settimeout(None)
sys.stderr.write("teachlab-relay: connected\n"); sys.stderr.flush()
def upstream():
    while True:
        data = os.read(0, 65536)
        if not data:
            try: s.shutdown(socket.SHUT_WR)
            except OSError: pass
            return
        s.sendall(data)
threading.Thread(target=upstream, daemon=True).start()
while True:
    data = s.recv(65536)
    if not data: break
    view = memoryview(data)
    while view: view = view[os.write(1, view):]
"""


@dataclass(frozen=True)
class CourseContainer:
    id: str
    name: str
    path: str  # the container's PATH: the course environment first (the image contract)


def _raw_socket(hijacked) -> socket.socket:
    """The plain socket under what docker-py's ``exec_start(socket=True)`` returns."""
    return hijacked if isinstance(hijacked, socket.socket) else hijacked._sock


class ExecStream:
    """One ``docker exec`` with its stdin/stdout (and, without a pty, stderr) as asyncio streams."""

    def __init__(
        self,
        bridge: ContainerBridge,
        exec_id: str,
        tty: bool,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        hijacked: object = None,
    ):
        self._bridge = bridge
        # docker-py's object of the hijacked connection, kept alive with the stream, so that connection is
        # never handed back to docker-py's pool while the exec uses it.
        self._hijacked = hijacked
        self.exec_id = exec_id
        self.tty = tty
        self._reader = reader
        self._writer = writer
        self.early_output = bytearray()  # stdout that came before the relay said it connected

    async def read(self) -> tuple[int, bytes]:
        """The next output chunk as (STDOUT or STDERR, bytes); (STDOUT, b"") at the end."""
        if self.early_output:
            data, self.early_output = bytes(self.early_output), bytearray()
            return STDOUT, data
        return await self._read_frame()

    async def _read_frame(self) -> tuple[int, bytes]:
        if self.tty:
            return STDOUT, await self._reader.read(65536)
        try:
            header = await self._reader.readexactly(8)
        except asyncio.IncompleteReadError:
            return STDOUT, b""
        stream, length = header[0], struct.unpack(">I", header[4:])[0]
        try:
            return (STDERR if stream == STDERR else STDOUT), await self._reader.readexactly(length)
        except asyncio.IncompleteReadError as partial:
            return STDOUT, partial.partial

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    async def drain(self) -> None:
        await self._writer.drain()

    def close_stdin(self) -> None:
        if self._writer.can_write_eof() and not self._writer.is_closing():
            self._writer.write_eof()

    def close(self) -> None:
        self._writer.close()

    async def resize(self, width: int, height: int) -> None:
        if self.tty and width > 0 and height > 0:
            try:
                await run_blocking(SSH_DOCKER, self._bridge.client.api.exec_resize, self.exec_id, height=height, width=width)
            except docker.errors.APIError:
                pass  # the process ended meanwhile

    async def exit_code(self) -> int:
        """The process's exit status (255 when the engine cannot tell, as OpenSSH reports a lost session)."""
        deadline = asyncio.get_running_loop().time() + EXIT_WAIT_SECONDS
        while True:
            try:
                info = await run_blocking(SSH_DOCKER, self._bridge.client.api.exec_inspect, self.exec_id)
            except docker.errors.APIError:
                return 255
            if not info.get("Running") and info.get("ExitCode") is not None:
                return int(info["ExitCode"])
            if asyncio.get_running_loop().time() > deadline:
                return 255
            await asyncio.sleep(EXIT_POLL_SECONDS)


class ContainerBridge:
    """Finds a student's course container and runs processes in it as the student."""

    def __init__(self, client: docker.DockerClient, lab_id: str, names: naming.LabNames):
        self.client = client
        self.lab_id = lab_id
        self.names = names

    def _find(self, user: str, course: str) -> CourseContainer | None:
        try:
            container = self.client.containers.get(self.names.container(user, course))
        except docker.errors.NotFound:
            return None
        labels = container.labels or {}
        expected = {Labels.USER: user, Labels.COURSE: course, Labels.LAB: self.lab_id}
        if any(labels.get(key) != value for key, value in expected.items()) or container.status != "running":
            return None
        environment = dict(item.split("=", 1) for item in container.attrs["Config"].get("Env") or [] if "=" in item)
        return CourseContainer(container.id, container.name, environment.get("PATH", "/usr/bin:/bin"))

    async def find(self, user: str, course: str) -> CourseContainer | None:
        """The running container of ``user``'s server for ``course`` in this lab, or None."""
        return await run_blocking(SSH_DOCKER, self._find, user, course)

    def _start(self, container_id: str, command: Sequence[str], tty: bool, environment: Mapping[str, str]):
        exec_id = self.client.api.exec_create(
            container_id,
            list(command),
            stdin=True,
            stdout=True,
            stderr=True,
            tty=tty,
            user=IMAGE.user,
            workdir=IMAGE.work_mount,
            environment=dict(environment),
        )["Id"]
        hijacked = self.client.api.exec_start(exec_id, tty=tty, socket=True)
        return exec_id, hijacked

    async def exec(
        self, container: CourseContainer, command: Sequence[str], *, tty: bool, environment: Mapping[str, str] | None = None
    ) -> ExecStream:
        exec_id, hijacked = await run_blocking(SSH_DOCKER, self._start, container.id, command, tty, environment or {})
        raw = _raw_socket(hijacked)
        raw.setblocking(False)
        if raw.family == socket.AF_UNIX:
            reader, writer = await asyncio.open_unix_connection(sock=raw, limit=1 << 20)
        else:
            reader, writer = await asyncio.open_connection(sock=raw, limit=1 << 20)
        return ExecStream(self, exec_id, tty, reader, writer, hijacked)

    async def open_relay(self, container: CourseContainer, host: str, port: int) -> ExecStream:
        """A connection to ``host:port`` made inside the container; OSError with the reason when it fails."""
        stream = await self.exec(container, [IMAGE.jupyter_python, "-c", RELAY_SCRIPT, host, str(port)], tty=False)
        said = bytearray()
        while not said.endswith(b"\n"):
            kind, data = await stream._read_frame()
            if not data:
                break
            (said if kind == STDERR else stream.early_output).extend(data)
        if bytes(said) != RELAY_READY:
            stream.close()
            reason = said.decode("utf-8", "replace").strip().removeprefix("teachlab-relay: ") or "the relay ended"
            raise OSError(reason)
        return stream
