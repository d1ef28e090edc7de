"""teachlab-ssh's SSH side: authenticate, authorize like a spawn, then bridge into the course container.

One ``GatewayConnection`` per client (asyncssh's server callbacks):

* **Who**: the login name is ``<user>+<course>``. A public key authenticates only the user who
  registered it (``SshKeyStore.owner_of``); a password is taken as a JupyterHub API token and must
  belong to that same user (the hub says whose it is). Failures slow the source down
  (``SourceBackoff``) and get one line in the client (an authentication banner).
* **May they**: the same catalog check as a spawn (``Course.access``: course, membership, term) with
  the user's hub groups, on the first session or forward. A stopped server is started through the
  hub's REST API, and its progress messages are printed while the client waits. Refusals are one line.
* **Bridge**: sessions (pty or not, shell or exec), the ``sftp`` subsystem and local forwards are
  ``docker exec`` processes in the student's own container (``ContainerBridge``). Remote forwards,
  agent and X11 forwarding are refused; the client is told why on its next session's stderr.
* **Activity**: a connection that moved data since the last report counts as activity of the course
  server (every ``activity_interval`` seconds); an idle connection reports nothing, so the idle culler
  still stops an idle server (and with it the connection).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Callable
from datetime import date, datetime, timezone
from pathlib import Path

import asyncssh

from ..catalog.cache import CatalogCache
from ..core.blocking import LEDGER, run_blocking
from ..core.contract import IMAGE
from ..core.problems import TeachlabError
from ..hubclient.api import HubApi, HubRefused
from .backoff import SourceBackoff
from .bridge import STDERR, ContainerBridge, CourseContainer, ExecStream
from .keys import SshKeyStore, fingerprint
from .login import LoginName, LoginNameError, forward_refusal, parse_login_name

log = logging.getLogger("teachlab.ssh")
PREFIX = "teachlab-ssh: "
WRITE_BUFFER_HIGH = 1 << 20
LOGIN_TIMEOUT_SECONDS = 120
START_TIMEOUT_SECONDS = 300
# The login shell's profile (Debian's /etc/profile) resets PATH; the container's PATH (course environment
# first) is put back afterwards, so `python` is the course's Python in every session.
RESTORE_PATH = 'export PATH="$TEACHLAB_LOGIN_PATH"; unset TEACHLAB_LOGIN_PATH\n'


_background_tasks: set[asyncio.Future] = set()


def _in_background(awaitable) -> None:
    """Run a small follow-up (resize, drain, bookkeeping) without losing the task to the garbage collector."""
    task = asyncio.ensure_future(awaitable)
    _background_tasks.add(task)
    task.add_done_callback(_background_tasks.discard)


class Refused(TeachlabError):
    """This connection may not open the course; the text is the one line the client sees."""


def _courses_line(catalog, user: str, groups: list[str], today: date) -> str:
    mine = [course.slug for course, _ in catalog.available_to(user, groups, today)]
    return f"Your courses: {', '.join(mine)}" if mine else "You have no course now; ask your instructor to add you"


FAILED_START_ANSWER_SECONDS = 5  # how long a failed start's own answer (with its status) is waited for
_SPAWN_FAILED = re.compile(r"^Spawn failed: (?:HTTP (\d{3}): [^(]*\((.*)\)|(.*))$", re.DOTALL)


def _start_failure(title: str, message: str) -> str:
    """The one line for a start that failed, with the spawner's own reason without JupyterHub's wrapping
    ("Spawn failed: HTTP 403: Forbidden (reason)", or "Spawn failed: reason" for the lab's own refusals, whose
    reason the hub shows as it is): a refusal (4xx, e.g. a GPU quota) or a failure."""
    failed = _SPAWN_FAILED.match(message.strip())
    if failed is None:
        return f"{title} failed to start: {message.strip()}"
    status, wrapped, plain = failed.groups()
    if status and status.startswith("4"):
        return f"the lab did not start {title}: {wrapped}"
    return f"{title} failed to start: {wrapped or plain}"


class Gateway:
    """What every connection shares: the key store, the hub, the engine, the catalog, the back-off."""

    def __init__(
        self,
        *,
        store: SshKeyStore,
        hub: HubApi,
        bridge: ContainerBridge,
        catalog_cache: CatalogCache,
        today: Callable[[], date],
        keys_url: str,
        token_url: str,
        backoff: SourceBackoff | None = None,
        source_backoff: SourceBackoff | None = None,
        activity_interval: float = 60.0,
    ):
        self.store = store
        self.hub = hub
        self.bridge = bridge
        self.catalog_cache = catalog_cache
        self.today = today
        self.keys_url = keys_url
        self.token_url = token_url
        # Guessing one person's credentials slows down after a few misses (per address and login name); a
        # whole address (a classroom behind one NAT) only after many, and a success never clears that.
        self.backoff = backoff or SourceBackoff()
        self.source_backoff = source_backoff or SourceBackoff(free_failures=40)
        self.activity_interval = activity_interval

    async def listen(self, host: str, port: int, host_key: asyncssh.SSHKey) -> asyncssh.SSHAcceptor:
        return await asyncssh.create_server(
            lambda: GatewayConnection(self),
            host,
            port,
            server_host_keys=[host_key],
            encoding=None,
            line_editor=False,  # the container's pty does the line editing; asyncssh's would wrap the channel
            agent_forwarding=False,
            x11_forwarding=False,
            allow_scp=False,  # scp runs over SFTP (OpenSSH 9), which the container's sftp-server serves
            login_timeout=LOGIN_TIMEOUT_SECONDS,
            keepalive_interval=30,
            keepalive_count_max=6,
        )

    async def open_course(self, login: LoginName, say: Callable[[str], None]) -> CourseContainer:
        """The running container of the login's course server, started through the hub when needed;
        Refused with one line when the user may not use the course or it does not start."""
        try:
            model = await self.hub.user(login.user)
        except (HubRefused, OSError) as exc:
            log.error("hub lookup of %s failed: %s", login.user, exc)
            raise Refused("the lab cannot check your courses right now; try again in a minute") from None
        if model is None:
            raise Refused(f"the lab does not know {login.user}; sign in to the lab in a browser once first")
        groups = list(model.get("groups") or [])
        catalog = await self.catalog_cache.refresh()
        today = self.today()
        course = catalog.courses.get(login.course)
        if course is None:
            raise Refused(f"there is no course {login.course!r}. {_courses_line(catalog, login.user, groups, today)}")
        access = course.access(login.user, groups, today)
        if not access.allowed:
            raise Refused(f"you cannot use {login.course}: {access.reason}. {_courses_line(catalog, login.user, groups, today)}")
        server = (model.get("servers") or {}).get(login.course) or {}
        if not server.get("ready"):
            await self._start(login, course.title, server, say)
        container = await self.bridge.find(login.user, login.course)
        if container is None:
            raise Refused(f"{course.title} failed to start: its container is not running; try again, or tell the lab's admins")
        return container

    async def _start(self, login: LoginName, title: str, server: dict, say: Callable[[str], None]) -> None:
        """Start the server through the hub (unless a start is on its way) and relay the hub's progress
        messages while it starts, as the hub's spawn page does."""
        if server.get("pending") == "stop":
            raise Refused(f"{title} is stopping right now; connect again in a few seconds")
        start: asyncio.Future | None = None
        if not server.get("pending"):
            say(f"starting {title} for you ...")
            # The hub answers the POST when the start is done (or after its slow-spawn timeout); the progress
            # stream meanwhile tells what happens, so both run at once.
            start = asyncio.ensure_future(self.hub.start_server(login.user, login.course))
            start.add_done_callback(lambda done: done.cancelled() or done.exception())  # read below, or by a failed event
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_SECONDS
        while asyncio.get_running_loop().time() < deadline:
            try:
                async for event in self.hub.progress(login.user, login.course):
                    if event.message:
                        say(f"[{event.progress if event.progress is not None else '?':>3}%] {event.message}")
                    if event.failed:
                        raise Refused(await self._failure_line(title, event.message, start))
                    if event.ready:
                        return
            except HubRefused:
                pass  # no start to follow (yet): the POST has not reached the spawner, or it already answered
            if start is not None and start.done():
                try:
                    start.result()
                except HubRefused as refused:
                    if "pending" not in refused.message and "already running" not in refused.message:
                        what = "the lab did not start {title}" if 400 <= refused.status < 500 else "{title} failed to start"
                        raise Refused(f"{what.format(title=title)}: {refused.message}") from None
                except OSError as error:
                    raise Refused(f"the lab did not start {title}: {error}") from None
                start = None  # started: the next progress request reports it ready
            await asyncio.sleep(0.5)
        raise Refused(f"{title} failed to start: not ready after {START_TIMEOUT_SECONDS} s; try again, or tell the lab's admins")

    @staticmethod
    async def _failure_line(title: str, message: str, start: asyncio.Future | None) -> str:
        """The hub's answer to the start says a refusal (4xx) from a failure; the progress event does not."""
        if start is not None:
            try:
                await asyncio.wait_for(asyncio.shield(start), timeout=FAILED_START_ANSWER_SECONDS)
            except HubRefused as refused:
                what = "the lab did not start" if 400 <= refused.status < 500 else "failed to start"
                return f"{what} {title}: {refused.message}" if what.startswith("the") else f"{title} {what}: {refused.message}"
            except (asyncio.TimeoutError, OSError):
                pass
        return _start_failure(title, message)

    async def report_activity(self, login: LoginName) -> None:
        try:
            await self.hub.report_activity(login.user, login.course, datetime.now(timezone.utc))
        except (HubRefused, OSError) as exc:
            log.warning("could not report activity of %s: %s", login, exc)


class GatewayConnection(asyncssh.SSHServer):
    """One client connection (asyncssh calls these methods)."""

    def __init__(self, gateway: Gateway):
        self.gateway = gateway
        self.conn: asyncssh.SSHServerConnection | None = None
        self.peer = "?"
        self.login: LoginName | None = None
        self.key_fingerprint: str | None = None
        self.notices: list[str] = []
        self._banners: set[str] = set()
        self._course: asyncio.Future | None = None
        self._traffic = False
        self._activity_task: asyncio.Task | None = None
        self.started = time.monotonic()

    # -- connection ---------------------------------------------------------------------------------
    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername") or ("?", 0)
        self.peer = f"{peer[0]}:{peer[1]}"

    def connection_lost(self, exc: Exception | None) -> None:
        if self._activity_task is not None:
            self._activity_task.cancel()
        if self.login is not None and self.conn is not None and self.conn.get_extra_info("username"):
            log.info("ssh connection closed: %s from %s after %.1f s", self.login, self.peer, time.monotonic() - self.started)

    @property
    def source(self) -> str:
        return self.peer.rsplit(":", 1)[0]

    def _banner(self, line: str) -> None:
        """One line before authentication ends (OpenSSH prints it on stderr); each line once."""
        if line in self._banners or self.conn is None:
            return
        self._banners.add(line)
        try:
            self.conn.send_auth_banner(PREFIX + line + "\n")
        except OSError:
            pass

    # -- authentication -----------------------------------------------------------------------------
    def begin_auth(self, username: str) -> bool:
        try:
            self.login = parse_login_name(username)
        except LoginNameError as error:
            self.login = None
            self._banner(str(error))
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    @property
    def _attempt_key(self) -> str:
        return f"{self.source} {self.login or '?'}"

    def _failed(self) -> None:
        self.gateway.backoff.failed(self._attempt_key)
        self.gateway.source_backoff.failed(self.source)

    async def _slow_down(self) -> None:
        delay = max(self.gateway.backoff.delay(self._attempt_key), self.gateway.source_backoff.delay(self.source))
        if delay:
            await asyncio.sleep(delay)

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        await self._slow_down()
        if self.login is None:
            self._failed()
            return False
        key_fingerprint = fingerprint(key)
        owner = await run_blocking(LEDGER, self.gateway.store.owner_of, key_fingerprint)
        if owner != self.login.user:
            self._failed()
            log.info("refused key %s for %s from %s", key_fingerprint, self.login, self.peer)
            self._banner(
                f"the key {key_fingerprint} is not registered for {self.login.user}; add your public key at {self.gateway.keys_url}"
            )
            return False
        self.key_fingerprint = key_fingerprint
        return True

    async def validate_password(self, username: str, password: str) -> bool:
        await self._slow_down()
        if self.login is None:
            self._failed()
            return False
        try:
            model = await self.gateway.hub.user_for_token(password)
        except (HubRefused, OSError) as exc:
            log.error("token check failed: %s", exc)
            self._banner("the lab cannot check tokens right now; try again in a minute, or log in with your key")
            return False
        if model is None or model.get("name") != self.login.user:
            self._failed()
            log.info("refused a token for %s from %s", self.login, self.peer)
            self._banner(
                f"that password is not a valid API token of {self.login.user} (expired, revoked or mistyped); "
                f"make a new token at {self.gateway.token_url}"
            )
            return False
        return True

    def auth_completed(self) -> None:
        self.gateway.backoff.succeeded(self._attempt_key)
        how = f"key {self.key_fingerprint}" if self.key_fingerprint else "API token"
        log.info("ssh login: %s from %s with %s", self.login, self.peer, how)
        if self.key_fingerprint:
            _in_background(run_blocking(LEDGER, self.gateway.store.mark_used, self.key_fingerprint))
        self._activity_task = asyncio.ensure_future(self._report_activity())

    # -- the course ---------------------------------------------------------------------------------
    async def course(self, say: Callable[[str], None]) -> CourseContainer:
        """The course container, checked and started once for the channels of a connection. A connection
        that outlives its server (stopped by the student, or by the idle culler) checks and starts again
        for its next channel, as a new connection would."""
        assert self.login is not None
        if self._course is not None and self._course.done() and not self._course.exception():
            current = await self.gateway.bridge.find(self.login.user, self.login.course)
            if current is None or current.id != self._course.result().id:
                self._course = None
        if self._course is None:
            self._course = asyncio.ensure_future(self.gateway.open_course(self.login, say))
        return await asyncio.shield(self._course)

    def traffic(self) -> None:
        self._traffic = True

    async def _report_activity(self) -> None:
        while True:
            await asyncio.sleep(self.gateway.activity_interval)
            if self._traffic and self.login is not None:
                self._traffic = False
                await self.gateway.report_activity(self.login)

    # -- channels -----------------------------------------------------------------------------------
    def session_requested(self) -> asyncssh.SSHServerSession:
        return CourseSession(self)

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        log.info("refused a remote forward (-R %s:%s) of %s from %s", listen_host, listen_port, self.login, self.peer)
        self.notices.append("remote port forwarding (-R) is refused: the lab does not forward ports into your computer")
        return False

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int):
        refusal = forward_refusal(dest_host, dest_port)
        if refusal is not None:
            log.info("refused a forward to %s:%s for %s from %s", dest_host, dest_port, self.login, self.peer)
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, PREFIX + refusal)
        assert self.conn is not None
        return self.conn.create_tcp_channel(), self._open_forward(dest_host, dest_port)

    async def _open_forward(self, host: str, port: int) -> ForwardSession:
        try:
            container = await self.course(say=lambda line: None)
        except Refused as refused:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, PREFIX + str(refused)) from None
        try:
            stream = await self.gateway.bridge.open_relay(container, host, port)
        except OSError as error:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_CONNECT_FAILED, f"{PREFIX}{host}:{port} inside your container: {error}"
            ) from None
        log.info("ssh forward opened: %s from %s to %s:%s", self.login, self.peer, host, port)
        return ForwardSession(self, stream, f"{host}:{port}")


class _Pump:
    """Shared by sessions and forwards: container output to the channel with back-pressure both ways."""

    def __init__(self, owner: GatewayConnection):
        self.owner = owner
        self.chan = None
        self.stream: ExecStream | None = None
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._pending_input: list[bytes] = []
        self._eof_pending = False
        self._task: asyncio.Task | None = None
        self.started = time.monotonic()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def data_received(self, data: bytes, datatype) -> None:
        self.owner.traffic()
        if self.stream is None:
            self._pending_input.append(data)
            return
        self._send(data)

    def _send(self, data: bytes) -> None:
        assert self.stream is not None
        self.stream.write(data)
        transport = self.stream._writer.transport
        if transport.get_write_buffer_size() > WRITE_BUFFER_HIGH:
            self.chan.pause_reading()
            _in_background(self._resume_after_drain())

    async def _resume_after_drain(self) -> None:
        try:
            await self.stream.drain()
        finally:
            self.chan.resume_reading()

    def eof_received(self) -> bool:
        if self.stream is None:
            self._eof_pending = True
        else:
            self.stream.close_stdin()
        return True  # keep sending output after the client's EOF (`echo x | ssh ... cat`)

    def attach(self, stream: ExecStream) -> None:
        self.stream = stream
        for data in self._pending_input:
            self._send(data)
        self._pending_input.clear()
        if self._eof_pending:
            stream.close_stdin()

    async def copy_output(self) -> None:
        assert self.stream is not None
        while True:
            await self._can_write.wait()
            kind, data = await self.stream.read()
            if not data:
                return
            self.owner.traffic()
            if kind == STDERR and hasattr(self.chan, "write_stderr"):
                self.chan.write_stderr(data)
            elif kind != STDERR:
                self.chan.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.stream is not None:
            self.stream.close()


class CourseSession(_Pump, asyncssh.SSHServerSession):
    """A shell, a command or the sftp subsystem, run in the container as the student."""

    def __init__(self, owner: GatewayConnection):
        super().__init__(owner)
        self.kind = "shell"
        self.command: str | None = None
        self.term: str | None = None
        self.size = (0, 0)

    def connection_made(self, chan) -> None:
        self.chan = chan
        # asyncssh refuses agent forwarding (agent_forwarding=False) without telling the client; tell it.
        refuse = getattr(chan, "_process_auth_agent_req_at_openssh_dot_com_request", None)
        if refuse is not None:

            def tell_and_refuse(packet):
                self.owner.notices.append("agent forwarding (-A) is refused: your keys stay on your computer")
                return refuse(packet)

            chan._process_auth_agent_req_at_openssh_dot_com_request = tell_and_refuse

    def pty_requested(self, term_type: str, term_size, term_modes) -> bool:
        self.term = term_type or "xterm"
        self.size = (term_size[0], term_size[1])
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        self.kind, self.command = "exec", command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        if subsystem != "sftp":
            return False
        self.kind = "sftp"
        return True

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        log.debug("window size of %s now %sx%s", self.owner.login, width, height)
        self.size = (width, height)
        if self.stream is not None:
            _in_background(self.stream.resize(width, height))

    def session_started(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def _say(self, line: str) -> None:
        self.chan.write_stderr((PREFIX + line + "\r\n" if self.term else PREFIX + line + "\n").encode())

    def _command(self) -> list[str]:
        shell = IMAGE.login_shell
        if self.kind == "sftp":
            return [IMAGE.sftp_server]
        if self.kind == "exec":
            return [shell, "-l", "-c", RESTORE_PATH + (self.command or "")]
        interactive = f"exec {shell} -i" if self.term else f"exec {shell}"
        return [shell, "-l", "-c", RESTORE_PATH + interactive]

    async def _run(self) -> None:
        login = self.owner.login
        code = 255
        try:
            container = await self.owner.course(self._say)
            for notice in self.owner.notices:
                self._say(notice)
            self.owner.notices.clear()
            environment = {
                "TEACHLAB_LOGIN_PATH": container.path,
                "HOME": IMAGE.home,
                "USER": IMAGE.username,
                "LOGNAME": IMAGE.username,
                "SHELL": IMAGE.login_shell,
            }
            if self.term:
                environment["TERM"] = self.term
            stream = await self.owner.gateway.bridge.exec(
                container, self._command(), tty=bool(self.term), environment=environment
            )
            self.attach(stream)
            if self.term:
                await stream.resize(*self.size)
            log.info("ssh session started: %s %s from %s", self.kind, login, self.owner.peer)
            await self.copy_output()
            code = await stream.exit_code()
        except Refused as refused:
            self._say(str(refused))
            log.info("ssh session refused: %s from %s: %s", login, self.owner.peer, refused)
            code = 1
        except asyncio.CancelledError:
            raise
        except Exception:  # the client gets one line, the log gets the traceback
            log.exception("ssh session of %s failed", login)
            self._say("the session failed inside the lab; try again, or tell the lab's admins")
        finally:
            log.info(
                "ssh session ended: %s %s from %s after %.1f s, exit %s",
                self.kind,
                login,
                self.owner.peer,
                time.monotonic() - self.started,
                code,
            )
        self.chan.exit(code)


class ForwardSession(_Pump, asyncssh.SSHTCPSession):
    """A local forward: bytes between the client and a relay connected inside the container."""

    def __init__(self, owner: GatewayConnection, stream: ExecStream, target: str):
        super().__init__(owner)
        self.target = target
        self.attach(stream)

    def connection_made(self, chan) -> None:
        self.chan = chan

    def session_started(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            await self.copy_output()
        finally:
            log.info(
                "ssh forward closed: %s from %s to %s after %.1f s",
                self.owner.login,
                self.owner.peer,
                self.target,
                time.monotonic() - self.started,
            )
            self.chan.close()


def load_host_key(path: Path) -> asyncssh.SSHKey:
    """The gateway's host key, generated on first start and kept (0600), so known_hosts entries stay valid."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        return asyncssh.read_private_key(str(path))
    key = asyncssh.generate_private_key("ssh-ed25519", comment="teachlab-ssh host key")
    with os.fdopen(descriptor, "wb") as file:
        file.write(key.export_private_key())
    return key
