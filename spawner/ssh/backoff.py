"""Per-source back-off against password and key guessing.

Pure, with an injectable clock (tests jump in time). A source (the client's IP address) that failed
``free_failures`` times within ``window`` waits before its next credential is even looked at: 1 s, then
2 s, 4 s ... up to ``max_delay``. A success clears the source; failures older than ``window`` are
forgotten. Memory is bounded: at most ``max_sources`` sources are remembered (the oldest go first).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class _Record:
    failures: int = 0
    last_failure: float = 0.0


@dataclass
class SourceBackoff:
    free_failures: int = 6  # an SSH agent offers several keys; the first few misses are not guessing
    max_delay: float = 30.0
    window: float = 600.0
    max_sources: int = 10_000
    clock: Callable[[], float] = time.monotonic
    _sources: OrderedDict[str, _Record] = field(default_factory=OrderedDict)

    def _record(self, source: str) -> _Record | None:
        record = self._sources.get(source)
        if record is not None and self.clock() - record.last_failure > self.window:
            del self._sources[source]
            return None
        return record

    def delay(self, source: str) -> float:
        """Seconds this source waits before its next attempt is checked."""
        record = self._record(source)
        if record is None or record.failures < self.free_failures:
            return 0.0
        return min(self.max_delay, 2.0 ** (record.failures - self.free_failures))

    def failed(self, source: str) -> None:
        record = self._record(source) or _Record()
        record.failures += 1
        record.last_failure = self.clock()
        self._sources[source] = record
        self._sources.move_to_end(source)
        while len(self._sources) > self.max_sources:
            self._sources.popitem(last=False)

    def succeeded(self, source: str) -> None:
        self._sources.pop(source, None)
