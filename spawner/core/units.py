"""Sizes written by people (course memory limits, declared GPU memory): ``"2G"``, ``"512M"``, ``"1.5T"``."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([KMGT])$")
_SIZE_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_memory(value: object) -> int:
    """``"80G"`` (K, M, G, T: powers of 1024) or a whole number of bytes -> bytes; ValueError otherwise."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"{value!r} is not a memory size")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
