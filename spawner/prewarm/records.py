"""What the pre-warm started, for which session, and how it went: the lab's other records' database.

SQLAlchemy Core; Alembic migrations in ``migrations/`` with their own version table, run by ``open`` (as the
GPU ledger and the SSH keys do). One row per warmed server and session; ``outcome`` is empty while the
session has not decided yet, then ``used`` (the student came) or ``wasted`` (stopped unused), or ``refused``
(the start was refused: a quota, a revoked student).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from ..core.databases import migrate, store_engine

VERSION_TABLE = "warm_starts_alembic_version"
OUTCOMES = ("used", "wasted", "refused")

metadata = MetaData()
warm_starts_table = Table(
    "warm_starts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("username", String(255), nullable=False),
    Column("course", String(64), nullable=False),
    Column("session_start", DateTime(timezone=True), nullable=False),
    Column("warmed_at", DateTime(timezone=True), nullable=False),
    Column("memory_bytes", Integer, nullable=False),
    Column("outcome", String(16), nullable=True),
    Column("detail", Text, nullable=True),
    UniqueConstraint("username", "course", "session_start", name="uq_warm_starts_once_per_session"),
)


def _utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes; every time here is UTC."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


@dataclass(frozen=True)
class WarmStart:
    id: int
    username: str
    course: str
    session_start: datetime
    warmed_at: datetime
    memory_bytes: int
    outcome: str | None


class WarmRecords:
    """The warm-start records; create with ``WarmRecords.open(url)``. Methods block."""

    def __init__(self, engine: Engine):
        self._engine = engine

    @classmethod
    def open(cls, url: str) -> WarmRecords:
        records = cls(store_engine(url, what="the warm-start records", example="sqlite:////srv/teachlab/lab.sqlite"))
        try:
            migrate(records._engine, "spawner.prewarm:migrations")
        except BaseException:
            records.close()
            raise
        return records

    def close(self) -> None:
        self._engine.dispose()

    def claim(self, *, username: str, course: str, session_start: datetime, memory_bytes: int, now: datetime) -> bool:
        """Record that this server is being warmed for this session; False when it already was (once only)."""
        try:
            with self._engine.begin() as connection:
                connection.execute(
                    insert(warm_starts_table).values(
                        username=username,
                        course=course,
                        session_start=session_start.astimezone(timezone.utc),
                        warmed_at=now.astimezone(timezone.utc),
                        memory_bytes=memory_bytes,
                    )
                )
            return True
        except IntegrityError:
            return False

    def warmed(self, course: str, session_start: datetime) -> set[str]:
        """Who was already warmed (or tried) for this session."""
        table = warm_starts_table
        with self._engine.connect() as connection:
            rows = connection.execute(
                select(table.c.username).where(
                    table.c.course == course, table.c.session_start == session_start.astimezone(timezone.utc)
                )
            )
            return {row.username for row in rows}

    def undecided(self) -> list[WarmStart]:
        table = warm_starts_table
        with self._engine.connect() as connection:
            rows = connection.execute(select(table).where(table.c.outcome.is_(None)).order_by(table.c.id))
            return [
                WarmStart(
                    row.id, row.username, row.course, _utc(row.session_start), _utc(row.warmed_at), row.memory_bytes, row.outcome
                )
                for row in rows
            ]

    def decide(self, record_id: int, outcome: str, detail: str = "") -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, not {outcome!r}")
        with self._engine.begin() as connection:
            connection.execute(
                update(warm_starts_table).where(warm_starts_table.c.id == record_id).values(outcome=outcome, detail=detail[:1000])
            )

    def outcome_counts(self) -> dict[tuple[str, str], float]:
        """(course, outcome or "waiting") -> how many, for the metrics."""
        table = warm_starts_table
        with self._engine.connect() as connection:
            rows = connection.execute(
                select(table.c.course, table.c.outcome, func.count()).group_by(table.c.course, table.c.outcome)
            )
            return {(course, outcome or "waiting"): float(count) for course, outcome, count in rows}
