"""Who holds which GPU, for how long, and within what quota: a ledger that survives hub restarts.

SQLAlchemy 2 Core on SQLite (default) or PostgreSQL; Alembic migrations in ``migrations/`` are run by
``GpuLedger.open``, which brings any database up to the newest schema. Alembic's version table is
``gpu_ledger_alembic_version``, so the ledger may share a database with JupyterHub's own tables.

Guarantees:

* No device is held twice. A device is a (node, device id) pair: a single server is the one node
  ``LOCAL_NODE``, and two nodes may both have a device ``"0"``. Every write runs in one transaction, and write transactions are
  serialized across processes by the database: SQLite's ``BEGIN IMMEDIATE`` (issued from SQLAlchemy's
  ``begin`` event, with a busy timeout so waiters queue instead of failing), PostgreSQL's
  transaction-scoped advisory lock. Within a process, writers first queue on a lock, which is about
  three times faster under contention than SQLite's sleeping busy handler (bench/gpu_allocation.py).
  The UNIQUE constraint on ``gpu_holdings (node, device_uuid)`` is the last line of defence: a
  violation becomes a 503 refusal.
* Across nodes, ``place_and_allocate`` chooses the node and its devices in that one transaction, with
  the pure ``spawner.cluster.placement.place`` over the ledger's own holdings: the ledger stays the only
  one that picks devices.
* ``allocate`` is idempotent per (username, server_name) and ``release`` is idempotent.
* Every holding has exactly one open usage interval; a usage interval never ends before it starts,
  so GPU-seconds are never negative.
* All times are timezone-aware UTC, read from the injectable clock (tests move it).

The methods block; the hub calls them from its executor.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta, timezone
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    delete,
    event,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.types import TypeDecorator

from ..cluster.placement import Node, NoRoom, PlacedServer, ServerRequest, place
from ..core.databases import SQLITE_BUSY_TIMEOUT_SECONDS, migrate, store_engine
from ..core.naming import is_course_slug
from ..core.problems import TeachlabError
from .inventory import GpuDevice
from .quotas import (
    EffectiveQuota,
    QuotaError,
    Refusal,
    check_devices,
    check_quota,
    remaining_gpu_hours,
    running_server_verdict,
    term_window,
)

VERSION_TABLE = "gpu_ledger_alembic_version"
# The node of a single-server lab, and of every holding made before the ledger knew nodes (migration 0002).
LOCAL_NODE = "local"
DEFAULT_SPAWN_GRACE = timedelta(minutes=10)
# Any fixed 64-bit number; every ledger process takes the same PostgreSQL advisory lock for writes.
_POSTGRES_WRITE_LOCK = 0x7EAC41AB0061
_WRITE_OPTION = "teachlab_gpu_ledger_write"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, also on SQLite, which stores no offset."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"the GPU ledger stores timezone-aware times only, not {value!r}")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


metadata = MetaData()

holdings_table = Table(
    "gpu_holdings",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("node", String(255), nullable=False, server_default=LOCAL_NODE),
    Column("device_uuid", String(128), nullable=False),
    Column("username", String(255), nullable=False),
    Column("course", String(64), nullable=False),
    Column("server_name", String(255), nullable=False),
    Column("container_name", String(255), nullable=True),
    Column("since", UtcDateTime(), nullable=False),
    UniqueConstraint("node", "device_uuid", name="uq_gpu_holdings_node_device"),
    Index("ix_gpu_holdings_server", "username", "server_name"),
)

usage_intervals_table = Table(
    "gpu_usage_intervals",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("username", String(255), nullable=False),
    Column("course", String(64), nullable=False),
    Column("node", String(255), nullable=False, server_default=LOCAL_NODE),
    Column("device_uuid", String(128), nullable=False),
    Column("started_at", UtcDateTime(), nullable=False),
    Column("ended_at", UtcDateTime(), nullable=True),
    Column("end_reason", Text, nullable=True),
    Index("ix_gpu_usage_intervals_course_user", "course", "username"),
    Index("ix_gpu_usage_intervals_device_open", "device_uuid", "ended_at"),
)

course_quotas_table = Table(
    "gpu_course_quotas",
    metadata,
    Column("course", String(64), primary_key=True),
    Column("max_concurrent_gpus", Integer, nullable=True),
    Column("gpu_hours_per_student", Float, nullable=True),
)

user_overrides_table = Table(
    "gpu_user_overrides",
    metadata,
    Column("username", String(255), primary_key=True),
    Column("course", String(64), primary_key=True),
    Column("gpu_hours", Float, nullable=True),
    Column("max_gpus", Integer, nullable=True),
)

audit_log_table = Table(
    "gpu_audit_log",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", UtcDateTime(), nullable=False),
    Column("actor", String(255), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(512), nullable=False),
    Column("old_value", Text, nullable=True),
    Column("new_value", Text, nullable=True),
    Column("reason", Text, nullable=True),
    Index("ix_gpu_audit_log_at", "at"),
)


class AllocationRefused(TeachlabError):
    """No GPU for this server now. ``reason`` is one sentence for the student; ``status`` is 403, 429
    or 503 as documented in ``spawner.gpu.quotas``."""

    def __init__(self, reason: str, status: int):
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class Allocation:
    """The devices a server holds on ``node``; ``already_held`` when an earlier allocation gave them."""

    username: str
    course: str
    server_name: str
    device_uuids: tuple[str, ...]
    since: datetime
    already_held: bool
    node: str = LOCAL_NODE


@dataclass(frozen=True)
class Holding:
    device_uuid: str
    username: str
    course: str
    server_name: str
    container_name: str | None
    since: datetime
    node: str = LOCAL_NODE


@dataclass(frozen=True)
class DeviceConflict:
    """A device that several servers claim; the ledger leaves it as it is and an admin decides."""

    device_uuid: str
    servers: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ReconcileReport:
    """What ``reconcile`` changed. ``pending`` are young holdings of servers with no container yet
    (their spawn may still be creating it), kept untouched."""

    released: tuple[Holding, ...]
    added: tuple[Holding, ...]
    pending: tuple[Holding, ...]
    conflicts: tuple[DeviceConflict, ...]
    protected: tuple[Holding, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.released or self.added)


@dataclass(frozen=True)
class UsageRow:
    course: str
    username: str
    gpu_seconds: float


@dataclass(frozen=True)
class UsageInterval:
    """One device held by one student's server of a course; ``ended_at`` is None while it is held."""

    course: str
    username: str
    device_uuid: str
    started_at: datetime
    ended_at: datetime | None


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    actor: str
    action: str
    target: str
    old_value: Any
    new_value: Any
    reason: str | None


def _sqlite_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    # Stop the sqlite3 module from issuing its own deferred BEGIN; _begin issues the right one.
    dbapi_connection.isolation_level = None
    _use_wal(dbapi_connection)


def _use_wal(dbapi_connection: sqlite3.Connection) -> None:
    """WAL lets readers (holdings, reports) run while one writer allocates. The mode is stored in the
    file; while another process is switching a new file, the switch fails at once instead of waiting
    for the busy timeout, so it is retried until then."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_SECONDS
    while True:
        try:
            dbapi_connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _begin(connection: Connection) -> None:
    """SQLite: writers take the write lock at BEGIN, so a read-then-write never races another writer."""
    immediate = connection.get_execution_options().get(_WRITE_OPTION, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _create_engine(url: str) -> Engine:
    engine = store_engine(url, what="the GPU ledger", example="sqlite:////srv/teachlab/gpu-ledger.sqlite")
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _begin)
    return engine


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def _holding(row: Any) -> Holding:
    return Holding(
        device_uuid=row.device_uuid,
        username=row.username,
        course=row.course,
        server_name=row.server_name,
        container_name=row.container_name,
        since=row.since,
        node=row.node,
    )


def _check_count(name: str, course: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise QuotaError(f"{name} for {course} must be a whole number >= 0, or empty for no limit, not {value!r}")


def _check_hours(name: str, course: str, value: float | None) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0
    ):
        raise QuotaError(f"{name} for {course} must be a number of hours >= 0, or empty for no limit, not {value!r}")


def _check_course(course: str) -> None:
    if not is_course_slug(course):
        raise QuotaError(f"{course!r} is not a course slug (use the course's folder name, e.g. 'deep-learning')")


class GpuLedger:
    """The persistent GPU ledger; create it with ``GpuLedger.open(url)``. Safe to share between threads."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = utcnow):
        self._engine = engine
        self._clock = clock
        self._write_lock = threading.Lock()

    @classmethod
    def open(cls, url: str, clock: Callable[[], datetime] = utcnow) -> GpuLedger:
        """Connect and upgrade the schema to the newest migration (a no-op when it is current)."""
        ledger = cls(_create_engine(url), clock)
        try:
            migrate(ledger._engine, "spawner.gpu:migrations", begin=lambda: ledger._transaction(write=True))
        except BaseException:
            ledger.close()
            raise
        return ledger

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> GpuLedger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError(f"the GPU ledger's clock must return timezone-aware times, not {now!r}")
        return now.astimezone(timezone.utc)

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Connection]:
        """One transaction; ``write`` ones are serialized with every other writer, in any process."""
        with self._write_lock if write else nullcontext(), self._engine.connect() as connection:
            connection.execution_options(**{_WRITE_OPTION: write})
            with connection.begin():
                if write and connection.dialect.name == "postgresql":
                    connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_POSTGRES_WRITE_LOCK})")
                yield connection

    # Allocation

    def allocate(
        self,
        *,
        username: str,
        course: str,
        server_name: str,
        count: int,
        devices: Sequence[GpuDevice],
        term_start: date,
        term_end: date,
        container_name: str | None = None,
        node: str = LOCAL_NODE,
    ) -> Allocation:
        """Give ``count`` free devices of ``node`` (lowest index first) to this server, or raise AllocationRefused.

        Quotas, this term's usage and free devices are read and the holdings written in one
        serialized transaction. A server that already holds devices gets the same ones back.
        ``devices`` are the node's; a single server is the one node ``LOCAL_NODE``.
        """
        if count < 1:
            raise ValueError(f"a server needs at least 1 GPU to allocate, not {count}")
        inventory = sorted(devices, key=lambda device: device.index)  # stable: MIG instances keep their order
        if len({device.uuid for device in inventory}) != len(inventory):
            raise ValueError("the GPU inventory lists a device UUID twice")
        now = self._now()
        try:
            with self._transaction(write=True) as connection:
                held = self._server_holdings(connection, username, server_name)
                if held:
                    return _already_held(username, server_name, held)
                taken = connection.execute(
                    select(holdings_table.c.node, holdings_table.c.device_uuid, holdings_table.c.course)
                ).all()
                taken_here = {row.device_uuid for row in taken if row.node == node}
                free = [device for device in inventory if device.uuid not in taken_here]
                refusal = self._quota_refusal(
                    connection, username, course, count, taken, term_start, term_end, now
                ) or check_devices(course=course, requested=count, free_devices=len(free), total_devices=len(inventory))
                if refusal is not None:
                    raise AllocationRefused(refusal.reason, refusal.status)
                chosen = tuple(device.uuid for device in free[:count])
                self._grant(connection, username, course, server_name, container_name, node, chosen, now)
        except IntegrityError as exc:
            raise AllocationRefused("another server took the same GPU at the same moment; try again", 503) from exc
        return Allocation(
            username=username,
            course=course,
            server_name=server_name,
            device_uuids=chosen,
            since=now,
            already_held=False,
            node=node,
        )

    def place_and_allocate(
        self,
        *,
        username: str,
        server_name: str,
        request: ServerRequest,
        nodes: Sequence[Node],
        placed: Sequence[PlacedServer],
        term_start: date,
        term_end: date,
        container_name: str | None = None,
    ) -> Allocation:
        """Choose the node and its devices for a GPU server of ``request.course`` and hold them, in one transaction.

        ``nodes`` are the swarm's nodes with their devices (lowest index first), ``placed`` the CPU and memory
        reservations of the servers already on them (their ``gpu_devices`` are ignored: the ledger's own
        holdings say which devices are held). Quotas are checked first, then ``place``; its reason (which
        resource, how many free, where) is the 503 refusal. A server that already holds devices gets them back.
        """
        if request.gpus < 1:
            raise ValueError(f"place_and_allocate is for GPU servers; {request.course} asks for {request.gpus} GPUs")
        now = self._now()
        try:
            with self._transaction(write=True) as connection:
                held = self._server_holdings(connection, username, server_name)
                if held:
                    return _already_held(username, server_name, held)
                taken = connection.execute(select(holdings_table)).all()
                refusal = self._quota_refusal(
                    connection, username, request.course, request.gpus, taken, term_start, term_end, now
                )
                if refusal is not None:
                    raise AllocationRefused(refusal.reason, refusal.status)
                holdings = [PlacedServer.holding(row.node, row.username, row.server_name, [row.device_uuid]) for row in taken]
                reservations = [replace(server, gpu_devices=()) for server in placed]
                try:
                    placement = place(request, nodes, [*reservations, *holdings])
                except NoRoom as no_room:
                    raise AllocationRefused(no_room.reason, 503) from None
                self._grant(
                    connection,
                    username,
                    request.course,
                    server_name,
                    container_name,
                    placement.node,
                    placement.gpu_devices,
                    now,
                )
        except IntegrityError as exc:
            raise AllocationRefused("another server took the same GPU at the same moment; try again", 503) from exc
        return Allocation(
            username=username,
            course=request.course,
            server_name=server_name,
            device_uuids=placement.gpu_devices,
            since=now,
            already_held=False,
            node=placement.node,
        )

    def release(self, *, username: str, server_name: str, reason: str, actor: str | None = None) -> list[str]:
        """End this server's holdings and close their usage; returns the released device UUIDs.

        Idempotent: a server holding nothing releases nothing. ``actor`` marks a manual release by an
        admin, which is written to the audit log with ``reason``.
        """
        now = self._now()
        with self._transaction(write=True) as connection:
            held = self._server_holdings(connection, username, server_name)
            self._end_holdings(connection, held, now, reason)
            released = [h.device_uuid for h in held]
            if actor is not None and released:
                self._audit(
                    connection,
                    now,
                    actor,
                    "release",
                    f"{username}/{server_name}",
                    old_value=released,
                    new_value=None,
                    reason=reason,
                )
        return released

    def holdings(self, node: str | None = None) -> list[Holding]:
        """Every device held now (on ``node`` only, when given), oldest first."""
        table = holdings_table
        with self._transaction(write=False) as connection:
            query = select(table).order_by(table.c.since, table.c.id)
            rows = connection.execute(query if node is None else query.where(table.c.node == node))
            return [_holding(row) for row in rows]

    def reconcile(
        self,
        running: Mapping[tuple[str, str], Sequence[str]],
        *,
        spawn_grace: timedelta = DEFAULT_SPAWN_GRACE,
        protected_devices: frozenset[str] = frozenset(),
        node: str = LOCAL_NODE,
    ) -> ReconcileReport:
        """Make the ledger's holdings on ``node`` equal to what that node's existing containers hold.

        ``running`` maps (username, server_name) of every server whose container exists to the device
        UUIDs on its labels. Holdings the containers do not confirm are released, unless the server
        has no container yet and its holding is younger than ``spawn_grace``: ``allocate`` runs before
        the container is created. Devices on containers but missing from the ledger are added (course
        = server name), unless several servers claim the same device: that is reported as a conflict.
        A holding of a device in ``protected_devices`` (held by a container whose owner cannot be told)
        is never released. Holdings on other nodes are left as they are.
        """
        now = self._now()
        claims: dict[str, list[tuple[str, str]]] = {}
        for server, uuids in running.items():
            for uuid in dict.fromkeys(uuids):
                claims.setdefault(uuid, []).append(server)
        conflicts = {uuid: servers for uuid, servers in claims.items() if len(servers) > 1}
        with self._transaction(write=True) as connection:
            rows = connection.execute(select(holdings_table).where(holdings_table.c.node == node).order_by(holdings_table.c.id))
            current = [_holding(row) for row in rows]
            released, pending, protected, confirmed = [], [], [], set()
            for holding in current:
                server = (holding.username, holding.server_name)
                if server in claims.get(holding.device_uuid, ()):
                    confirmed.add(holding.device_uuid)
                elif holding.device_uuid in protected_devices:
                    protected.append(holding)
                elif server not in running and now - holding.since < spawn_grace:
                    pending.append(holding)
                else:
                    released.append(holding)
                    reason = (
                        "reconcile: its container does not have this device"
                        if server in running
                        else "reconcile: its server has no container"
                    )
                    self._end_holdings(connection, [holding], now, reason)
            pending_by_uuid = {holding.device_uuid: holding for holding in pending}
            added = []
            for uuid, servers in sorted(claims.items()):
                if uuid in pending_by_uuid:
                    # A starting server was given a device that an existing container already uses.
                    starting = pending_by_uuid[uuid]
                    conflicts[uuid] = [(starting.username, starting.server_name), *servers]
                elif uuid not in confirmed and uuid not in conflicts:
                    username, server_name = servers[0]
                    holding = Holding(
                        device_uuid=uuid,
                        username=username,
                        course=server_name,
                        server_name=server_name,
                        container_name=None,
                        since=now,
                        node=node,
                    )
                    self._insert_holding(connection, holding)
                    added.append(holding)
        return ReconcileReport(
            released=tuple(released),
            added=tuple(added),
            pending=tuple(pending),
            protected=tuple(protected),
            conflicts=tuple(DeviceConflict(uuid, tuple(sorted(servers))) for uuid, servers in sorted(conflicts.items())),
        )

    def running_server_verdict(
        self, *, username: str, server_name: str, course: str, term_start: date, term_end: date, max_server_hours: float
    ) -> str | None:
        """Why this running server must give its GPUs back now (``quotas.running_server_verdict``), or ``None``."""
        now = self._now()
        window_start, window_end = term_window(term_start, term_end)
        with self._transaction(write=False) as connection:
            held = self._server_holdings(connection, username, server_name)
            if not held:
                return None
            used = self._usage_seconds(
                connection, username=username, course=course, since=window_start, until=min(now, window_end)
            )
            return running_server_verdict(
                course=course,
                quota=self._quota_for(connection, username, course),
                used_seconds=used,
                held_since=min(h.since for h in held),
                now=now,
                max_server_hours=max_server_hours,
            )

    # Usage

    def usage_seconds(self, *, username: str, course: str, since: datetime, until: datetime) -> float:
        """GPU-seconds of this student in this course within [since, until]; open intervals count up to ``until``."""
        with self._transaction(write=False) as connection:
            return self._usage_seconds(connection, username=username, course=course, since=since, until=until)

    def remaining_gpu_hours(self, *, username: str, course: str, term_start: date, term_end: date) -> float | None:
        """GPU-hours left to this student this term, or ``None`` when unlimited; for the spawn form."""
        window_start, window_end = term_window(term_start, term_end)
        with self._transaction(write=False) as connection:
            used = self._usage_seconds(
                connection, username=username, course=course, since=window_start, until=min(self._now(), window_end)
            )
            return remaining_gpu_hours(self._quota_for(connection, username, course), used)

    def usage_report(
        self, course: str | None = None, since: datetime | None = None, until: datetime | None = None
    ) -> list[UsageRow]:
        """GPU-seconds per (course, student) within [since, until] (default: all time up to now)."""
        until = self._now() if until is None else until
        table = usage_intervals_table
        conditions = [table.c.started_at < until]
        if since is not None:
            conditions.append(or_(table.c.ended_at.is_(None), table.c.ended_at > since))
        if course is not None:
            conditions.append(table.c.course == course)
        totals: dict[tuple[str, str], float] = {}
        with self._transaction(write=False) as connection:
            for row in connection.execute(select(table).where(*conditions)):
                key = (row.course, row.username)
                totals[key] = totals.get(key, 0.0) + _overlap_seconds(row.started_at, row.ended_at, since, until)
        return [UsageRow(course=c, username=u, gpu_seconds=seconds) for (c, u), seconds in sorted(totals.items())]

    def usage_intervals(self, *, since: datetime, until: datetime | None = None) -> list[UsageInterval]:
        """Every interval that overlaps [since, until] (default: up to now), oldest first: the charts' data."""
        until = self._now() if until is None else until
        table = usage_intervals_table
        with self._transaction(write=False) as connection:
            rows = connection.execute(
                select(table)
                .where(table.c.started_at <= until, or_(table.c.ended_at.is_(None), table.c.ended_at > since))
                .order_by(table.c.started_at, table.c.id)
            )
            return [UsageInterval(row.course, row.username, row.device_uuid, row.started_at, row.ended_at) for row in rows]

    # Quotas

    def set_course_quota(
        self, course: str, *, max_concurrent_gpus: int | None, gpu_hours_per_student: float | None, actor: str
    ) -> None:
        """Set both course limits (``None``: no limit); the change is audited."""
        _check_course(course)
        _check_count("max_concurrent_gpus", course, max_concurrent_gpus)
        _check_hours("gpu_hours_per_student", course, gpu_hours_per_student)
        new = {"max_concurrent_gpus": max_concurrent_gpus, "gpu_hours_per_student": gpu_hours_per_student}
        table = course_quotas_table
        with self._transaction(write=True) as connection:
            row = connection.execute(select(table).where(table.c.course == course)).first()
            if row is None:
                old = None
                connection.execute(insert(table).values(course=course, **new))
            else:
                old = {"max_concurrent_gpus": row.max_concurrent_gpus, "gpu_hours_per_student": row.gpu_hours_per_student}
                connection.execute(update(table).where(table.c.course == course).values(**new))
            self._audit(
                connection, self._now(), actor, "set course quota", f"course {course}", old_value=old, new_value=new, reason=None
            )

    def set_user_override(self, username: str, course: str, *, gpu_hours: float | None, max_gpus: int | None, actor: str) -> None:
        """Override one student's limits in a course; ``None`` keeps the course's value (and, for
        ``max_gpus``, no per-student cap). Both ``None`` removes the override. Audited."""
        _check_course(course)
        _check_hours("gpu_hours", course, gpu_hours)
        _check_count("max_gpus", course, max_gpus)
        new = None if gpu_hours is None and max_gpus is None else {"gpu_hours": gpu_hours, "max_gpus": max_gpus}
        table = user_overrides_table
        match = and_(table.c.username == username, table.c.course == course)
        with self._transaction(write=True) as connection:
            row = connection.execute(select(table).where(match)).first()
            old = None if row is None else {"gpu_hours": row.gpu_hours, "max_gpus": row.max_gpus}
            connection.execute(delete(table).where(match))
            if new is not None:
                connection.execute(insert(table).values(username=username, course=course, **new))
            self._audit(
                connection,
                self._now(),
                actor,
                "set user override",
                f"{username} in {course}",
                old_value=old,
                new_value=new,
                reason=None,
            )

    def course_quotas(self) -> list[dict[str, Any]]:
        """Every stored course quota as a JSON-ready row (course, max_concurrent_gpus, gpu_hours_per_student)."""
        table = course_quotas_table
        with self._transaction(write=False) as connection:
            return [dict(row._mapping) for row in connection.execute(select(table).order_by(table.c.course))]

    def user_overrides(self) -> list[dict[str, Any]]:
        """Every per-student override as a JSON-ready row (username, course, gpu_hours, max_gpus)."""
        table = user_overrides_table
        with self._transaction(write=False) as connection:
            rows = connection.execute(select(table).order_by(table.c.course, table.c.username))
            return [dict(row._mapping) for row in rows]

    def quota_for(self, username: str, course: str) -> EffectiveQuota:
        with self._transaction(write=False) as connection:
            return self._quota_for(connection, username, course)

    def erase_person(self, username: str) -> dict[str, int]:
        """Delete every row about ``username`` (holdings, usage, overrides, the audit entries naming them), for an
        erasure on request; returns how many of each. A person with a server running is stopped first by the caller."""
        counts = {}
        audited = or_(
            audit_log_table.c.target == username,
            audit_log_table.c.target.startswith(f"{username}/", autoescape=True),
            audit_log_table.c.target.startswith(f"{username} in ", autoescape=True),
        )
        with self._transaction(write=True) as connection:
            for name, table, where in (
                ("holdings", holdings_table, holdings_table.c.username == username),
                ("usage_intervals", usage_intervals_table, usage_intervals_table.c.username == username),
                ("user_overrides", user_overrides_table, user_overrides_table.c.username == username),
                ("audit_entries", audit_log_table, audited),
            ):
                counts[name] = connection.execute(delete(table).where(where)).rowcount
        return counts

    def audit_log(self, limit: int = 100) -> list[AuditEntry]:
        """The newest ``limit`` quota changes and manual releases, newest first."""
        table = audit_log_table
        with self._transaction(write=False) as connection:
            rows = connection.execute(select(table).order_by(table.c.at.desc(), table.c.id.desc()).limit(limit))
            return [
                AuditEntry(
                    at=row.at,
                    actor=row.actor,
                    action=row.action,
                    target=row.target,
                    old_value=None if row.old_value is None else json.loads(row.old_value),
                    new_value=None if row.new_value is None else json.loads(row.new_value),
                    reason=row.reason,
                )
                for row in rows
            ]

    # Helpers running inside a caller's transaction

    def _quota_refusal(
        self,
        connection: Connection,
        username: str,
        course: str,
        requested: int,
        taken: Sequence[Any],
        term_start: date,
        term_end: date,
        now: datetime,
    ) -> Refusal | None:
        """The quota checks of ``quotas.check_quota``; the course's cap counts its GPUs on every node."""
        window_start, window_end = term_window(term_start, term_end)
        return check_quota(
            course=course,
            requested=requested,
            quota=self._quota_for(connection, username, course),
            used_seconds=self._usage_seconds(
                connection, username=username, course=course, since=window_start, until=min(now, window_end)
            ),
            course_held=sum(1 for row in taken if row.course == course),
        )

    def _grant(
        self,
        connection: Connection,
        username: str,
        course: str,
        server_name: str,
        container_name: str | None,
        node: str,
        device_uuids: Sequence[str],
        now: datetime,
    ) -> None:
        for uuid in device_uuids:
            self._insert_holding(
                connection,
                Holding(
                    device_uuid=uuid,
                    username=username,
                    course=course,
                    server_name=server_name,
                    container_name=container_name,
                    since=now,
                    node=node,
                ),
            )

    @staticmethod
    def _server_holdings(connection: Connection, username: str, server_name: str) -> list[Holding]:
        table = holdings_table
        rows = connection.execute(
            select(table).where(table.c.username == username, table.c.server_name == server_name).order_by(table.c.id)
        )
        return [_holding(row) for row in rows]

    @staticmethod
    def _insert_holding(connection: Connection, holding: Holding) -> None:
        connection.execute(
            insert(holdings_table).values(
                node=holding.node,
                device_uuid=holding.device_uuid,
                username=holding.username,
                course=holding.course,
                server_name=holding.server_name,
                container_name=holding.container_name,
                since=holding.since,
            )
        )
        connection.execute(
            insert(usage_intervals_table).values(
                username=holding.username,
                course=holding.course,
                node=holding.node,
                device_uuid=holding.device_uuid,
                started_at=holding.since,
            )
        )

    @staticmethod
    def _end_holdings(connection: Connection, held: Sequence[Holding], now: datetime, reason: str) -> None:
        intervals = usage_intervals_table
        for holding in held:
            connection.execute(
                delete(holdings_table).where(
                    holdings_table.c.node == holding.node, holdings_table.c.device_uuid == holding.device_uuid
                )
            )
            connection.execute(
                update(intervals)
                .where(
                    intervals.c.node == holding.node,
                    intervals.c.device_uuid == holding.device_uuid,
                    intervals.c.username == holding.username,
                    intervals.c.ended_at.is_(None),
                )
                # A clock that went back must not make usage negative.
                .values(ended_at=max(now, holding.since), end_reason=reason)
            )

    @staticmethod
    def _quota_for(connection: Connection, username: str, course: str) -> EffectiveQuota:
        course_row = connection.execute(select(course_quotas_table).where(course_quotas_table.c.course == course)).first()
        override = connection.execute(
            select(user_overrides_table).where(
                user_overrides_table.c.username == username, user_overrides_table.c.course == course
            )
        ).first()
        course_hours = course_row.gpu_hours_per_student if course_row else None
        return EffectiveQuota(
            max_concurrent_gpus=course_row.max_concurrent_gpus if course_row else None,
            gpu_hours=override.gpu_hours if override is not None and override.gpu_hours is not None else course_hours,
            max_gpus=override.max_gpus if override is not None else None,
        )

    @staticmethod
    def _usage_seconds(connection: Connection, *, username: str, course: str, since: datetime, until: datetime) -> float:
        table = usage_intervals_table
        rows = connection.execute(
            select(table.c.started_at, table.c.ended_at).where(
                table.c.username == username,
                table.c.course == course,
                table.c.started_at < until,
                or_(table.c.ended_at.is_(None), table.c.ended_at > since),
            )
        )
        return sum(_overlap_seconds(row.started_at, row.ended_at, since, until) for row in rows)

    @staticmethod
    def _audit(
        connection: Connection,
        at: datetime,
        actor: str,
        action: str,
        target: str,
        *,
        old_value: Any,
        new_value: Any,
        reason: str | None,
    ) -> None:
        connection.execute(
            insert(audit_log_table).values(
                at=at,
                actor=actor,
                action=action,
                target=target,
                old_value=_json(old_value),
                new_value=_json(new_value),
                reason=reason,
            )
        )


def _already_held(username: str, server_name: str, held: Sequence[Holding]) -> Allocation:
    return Allocation(
        username=username,
        course=held[0].course,
        server_name=server_name,
        device_uuids=tuple(h.device_uuid for h in held),
        since=min(h.since for h in held),
        already_held=True,
        node=held[0].node,
    )


def _overlap_seconds(started_at: datetime, ended_at: datetime | None, since: datetime | None, until: datetime) -> float:
    """Seconds of [started_at, ended_at or until] inside [since, until]; never negative."""
    start = started_at if since is None else max(started_at, since)
    end = until if ended_at is None else min(ended_at, until)
    return max(0.0, (end - start).total_seconds())
