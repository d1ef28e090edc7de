"""Students' SSH public keys: parsed and checked, stored with the lab's other records.

SQLAlchemy 2 Core on the database of the lab's records (the GPU ledger's URL: SQLite in the state
folder, or PostgreSQL); Alembic migrations in ``migrations/`` run in ``SshKeyStore.open``, with their own
version table (``ssh_keys_alembic_version``), as ``spawner.gpu.ledger`` does. Guarantees:

* One key belongs to one user: the key's SHA256 fingerprint is UNIQUE, so a key registered by one
  user never authenticates another (``owner_of`` has one answer).
* Only public keys of algorithms OpenSSH 9 offers by default are accepted (RSA from 2048 bits); a
  pasted private key is refused with a warning, never stored.
* Every failure a person can cause is a ``KeyRejected`` with one line saying what to do.

The methods block; async callers go through ``spawner.core.blocking``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import asyncssh
from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from ..core.databases import migrate, store_engine
from ..core.problems import TeachlabError

VERSION_TABLE = "ssh_keys_alembic_version"
MAX_KEYS_PER_USER = 20
MAX_KEY_TEXT = 16_384
MIN_RSA_BITS = 2048
ALGORITHMS = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-rsa",
)
_COMMENT_UNSAFE = re.compile(r"[^\w.@+\- ]")

metadata = MetaData()
keys_table = Table(
    "ssh_public_keys",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("username", String(255), nullable=False, index=True),
    Column("fingerprint", String(128), nullable=False),
    Column("algorithm", String(64), nullable=False),
    Column("public_key", Text, nullable=False),
    Column("comment", String(255), nullable=False),
    Column("added_at", DateTime(timezone=True), nullable=False),
    Column("last_used_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("fingerprint", name="uq_ssh_public_keys_fingerprint"),
)


class KeyRejected(TeachlabError):
    """A key that cannot be added or removed; the text says why and what to do."""


@dataclass(frozen=True)
class ParsedKey:
    algorithm: str
    fingerprint: str  # SHA256:..., as `ssh-keygen -lf` prints it
    public_key: str  # "<algorithm> <base64>", without the comment
    comment: str


@dataclass(frozen=True)
class StoredKey:
    id: int
    username: str
    fingerprint: str
    algorithm: str
    public_key: str
    comment: str
    added_at: datetime
    last_used_at: datetime | None


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def fingerprint(key: asyncssh.SSHKey) -> str:
    return key.get_fingerprint("sha256")


def parse_public_key(text: str) -> ParsedKey:
    """One OpenSSH public key line (what ``~/.ssh/id_ed25519.pub`` holds), checked; or KeyRejected."""
    text = (text or "").strip()
    if not text:
        raise KeyRejected("paste the contents of your public key file, e.g. ~/.ssh/id_ed25519.pub")
    if "PRIVATE KEY" in text:
        raise KeyRejected(
            "that is a PRIVATE key: never share it. Paste the public key (the .pub file) instead, "
            "and make a new key pair, as this one is no longer secret"
        )
    if len(text) > MAX_KEY_TEXT or len(text.splitlines()) != 1:
        raise KeyRejected("paste exactly one public key, one line starting with e.g. ssh-ed25519")
    try:
        key = asyncssh.import_public_key(text)
    except (asyncssh.KeyImportError, ValueError):
        raise KeyRejected(
            "that is not an OpenSSH public key; make one with `ssh-keygen -t ed25519` and paste ~/.ssh/id_ed25519.pub"
        ) from None
    algorithm = key.algorithm.decode("ascii", "replace")
    if algorithm not in ALGORITHMS:
        raise KeyRejected(f"{algorithm} keys are not accepted; make an ed25519 key with `ssh-keygen -t ed25519`")
    if algorithm == "ssh-rsa" and key.pyca_key.key_size < MIN_RSA_BITS:
        raise KeyRejected(
            f"this RSA key has {key.pyca_key.key_size} bits, fewer than {MIN_RSA_BITS}; make an ed25519 key with `ssh-keygen -t ed25519`"
        )
    parts = text.split()
    comment = _COMMENT_UNSAFE.sub("", " ".join(parts[2:]))[:100].strip() if len(parts) > 2 else ""
    return ParsedKey(
        algorithm=algorithm,
        fingerprint=fingerprint(key),
        public_key=key.export_public_key("openssh").decode("ascii").split()[0] + " " + parts[1],
        comment=comment,
    )


def _stored(row) -> StoredKey:
    return StoredKey(
        id=row.id,
        username=row.username,
        fingerprint=row.fingerprint,
        algorithm=row.algorithm,
        public_key=row.public_key,
        comment=row.comment,
        added_at=_aware(row.added_at),
        last_used_at=_aware(row.last_used_at),
    )


class SshKeyStore:
    """Users' SSH public keys. Create with ``SshKeyStore.open(url)``; safe to share between threads."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = utcnow):
        self._engine = engine
        self._clock = clock

    @classmethod
    def open(cls, url: str, clock: Callable[[], datetime] = utcnow) -> SshKeyStore:
        """Connect and bring the tables to the newest migration (a no-op when current)."""
        store = cls(store_engine(url, what="the SSH key store", example="sqlite:////srv/teachlab/lab.sqlite"), clock)
        try:
            migrate(store._engine, "spawner.ssh:migrations")
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        self._engine.dispose()

    def add(self, username: str, text: str) -> StoredKey:
        """Register a public key for ``username``; KeyRejected if it is bad, already registered or one too many."""
        parsed = parse_public_key(text)
        try:
            with self._engine.begin() as connection:
                owner = connection.execute(
                    select(keys_table.c.username).where(keys_table.c.fingerprint == parsed.fingerprint)
                ).scalar_one_or_none()
                if owner == username:
                    raise KeyRejected(f"you have already added this key ({parsed.fingerprint})")
                if owner is not None:
                    raise KeyRejected(
                        "this key is registered to another account; make a key of your own with `ssh-keygen -t ed25519`"
                    )
                count = len(connection.execute(select(keys_table.c.id).where(keys_table.c.username == username)).all())
                if count >= MAX_KEYS_PER_USER:
                    raise KeyRejected(f"you have {count} keys, the most one account may have; delete one you no longer use")
                result = connection.execute(
                    insert(keys_table).values(
                        username=username,
                        fingerprint=parsed.fingerprint,
                        algorithm=parsed.algorithm,
                        public_key=parsed.public_key,
                        comment=parsed.comment,
                        added_at=self._clock(),
                    )
                )
                key_id = result.inserted_primary_key[0]
        except IntegrityError:
            raise KeyRejected("this key was registered a moment ago by another account; make a key of your own") from None
        return self.get(username, key_id)

    def get(self, username: str, key_id: int) -> StoredKey:
        with self._engine.connect() as connection:
            row = connection.execute(
                select(keys_table).where(keys_table.c.id == key_id, keys_table.c.username == username)
            ).one_or_none()
        if row is None:
            raise KeyRejected(f"you have no key number {key_id}; reload the page")
        return _stored(row)

    def keys_of(self, username: str) -> list[StoredKey]:
        with self._engine.connect() as connection:
            rows = connection.execute(select(keys_table).where(keys_table.c.username == username).order_by(keys_table.c.id))
            return [_stored(row) for row in rows]

    def delete(self, username: str, key_id: int) -> StoredKey:
        """Remove one of ``username``'s own keys (another user's key id is "not found", never removed)."""
        key = self.get(username, key_id)
        with self._engine.begin() as connection:
            connection.execute(delete(keys_table).where(keys_table.c.id == key_id, keys_table.c.username == username))
        return key

    def owner_of(self, key_fingerprint: str) -> str | None:
        """The one user who registered this key, or None."""
        with self._engine.connect() as connection:
            return connection.execute(
                select(keys_table.c.username).where(keys_table.c.fingerprint == key_fingerprint)
            ).scalar_one_or_none()

    def mark_used(self, key_fingerprint: str) -> None:
        with self._engine.begin() as connection:
            connection.execute(
                update(keys_table).where(keys_table.c.fingerprint == key_fingerprint).values(last_used_at=self._clock())
            )
