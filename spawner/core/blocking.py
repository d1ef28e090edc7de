"""The one way Teachlab runs blocking calls (databases, files, NVML) off the event loop.

Each concern gets a named thread pool, so a slow database never queues behind a slow file system and
neither holds the Docker threads (``spawner.docker(...)``) that every start and poll of the hub needs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Final, TypeVar

T = TypeVar("T")

# Pool names and sizes. GPU ledger calls serialize in the database anyway; four threads let reads run
# beside a write. Catalog and registry reads are quick file reads: one thread keeps them in order.
LEDGER: Final = "ledger"
FILES: Final = "files"
DISKS: Final = "disks"  # mkfs and mount of size-limited volumes: seconds each, never on the files pool
SSH_DOCKER: Final = "ssh-docker"  # the SSH gateway's exec calls: quick, but one per session and forward
PUBLISHES: Final = "publishes"  # course publishes of teachlab-courses: minutes each, two courses at a time
DOCKER_CALLS: Final = "docker-calls"  # services' Docker calls: a rollback, a class's versions, a work download's helper
_POOL_SIZES: Final = {LEDGER: 4, FILES: 1, DISKS: 2, SSH_DOCKER: 8, PUBLISHES: 2, DOCKER_CALLS: 4}

_pools: dict[str, ThreadPoolExecutor] = {}
_lock = threading.Lock()


def pool(name: str) -> ThreadPoolExecutor:
    """The process's pool called ``name`` (created on first use)."""
    with _lock:
        if name not in _pools:
            _pools[name] = ThreadPoolExecutor(max_workers=_POOL_SIZES.get(name, 2), thread_name_prefix=f"teachlab-{name}")
        return _pools[name]


async def run_blocking(pool_name: str, function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``function(*args, **kwargs)`` in the named pool, awaited without blocking the event loop."""
    return await asyncio.get_running_loop().run_in_executor(pool(pool_name), partial(function, *args, **kwargs))
