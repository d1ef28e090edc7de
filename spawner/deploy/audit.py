"""The audit log of admins' commands that remove people's work: one JSON line each, in ``<state>/audit.log``.

End-of-term archives, their deletion and the erasure of a person each leave a line saying what was done,
when, by whom and how much. An erased person is named only by a digest of their name
(``person_digest``): the log proves the erasure without keeping who it was, and an admin asked "was X
erased?" computes the digest of X and finds it.
"""

from __future__ import annotations

import datetime
import getpass
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..core.contract import StateLayout
from ..core.secrets import private_folder

AUDIT_FILE = "audit.log"


def audit_path(state_dir: Path) -> Path:
    return StateLayout(state_dir).root / AUDIT_FILE


def person_digest(username: str) -> str:
    return "sha256:" + hashlib.sha256(username.encode()).hexdigest()[:16]


def actor() -> str:
    """Who runs the command: the admin behind sudo if any."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


def record(state_dir: Path, action: str, **details: Any) -> str:
    """Append one line and return it."""
    entry = {
        "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "actor": actor(),
        "action": action,
        **details,
    }
    line = json.dumps(entry, sort_keys=False, default=str)
    path = audit_path(state_dir)
    private_folder(path.parent)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(descriptor, "a") as handle:
        handle.write(line + "\n")
    return line


def entries(state_dir: Path) -> list[dict]:
    path = audit_path(state_dir)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
