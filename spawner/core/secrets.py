"""Secret files and the folders that hold them: 0600 and 0700, also when they already exist.

A secret file made by an earlier release, by hand, or restored from a backup may carry wider permissions;
every reader here narrows them before it reads, so nobody else on the machine reads the lab's keys.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_FOLDER = 0o700


def private_folder(path: Path) -> Path:
    """``path`` exists and only its owner may enter it."""
    path.mkdir(parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != PRIVATE_FOLDER:
        os.chmod(path, PRIVATE_FOLDER)
    return path


def narrow(path: Path) -> None:
    """Make an existing secret file readable by its owner alone."""
    if path.exists() and stat.S_IMODE(path.stat().st_mode) & 0o077:
        os.chmod(path, PRIVATE_FILE)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a file that is 0600 from its first byte."""
    private_folder(path.parent)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    narrow(path)


def hex_secret(path: Path, nbytes: int = 32) -> str:
    """The hex secret in ``path``, made (``nbytes`` random bytes) when the file is missing."""
    if not path.exists():
        write_private(path, secrets.token_hex(nbytes).encode() + b"\n")
    narrow(path)
    return path.read_text().strip()
