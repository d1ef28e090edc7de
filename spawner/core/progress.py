"""Progress of long steps: a live line with the step and elapsed time on a terminal, plain lines elsewhere."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.status import Status


class Progress:
    """Reports steps; ``detail()`` updates the live line (e.g. the current Dockerfile step)."""

    def __init__(self, console: Console | None = None, quiet: bool = False):
        self.console = console or Console(stderr=True, highlight=False)
        self.quiet = quiet
        self._status: Status | None = None
        self._step = ""
        self._started = 0.0

    @property
    def live(self) -> bool:
        return self.console.is_terminal and not self.quiet

    @contextmanager
    def step(self, title: str) -> Iterator[Progress]:
        self._step, self._started = title, time.monotonic()
        if self.live:
            self._status = self.console.status(title)
            self._status.start()
        elif not self.quiet:
            self.console.print(f"... {title}", markup=False)
        try:
            yield self
        except BaseException:
            self._finish("failed")
            raise
        self._finish("done")

    def detail(self, text: str) -> None:
        if self._status is not None:
            elapsed = time.monotonic() - self._started
            self._status.update(f"{self._step} [{elapsed:4.0f} s] {text[:100]}")

    def info(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, markup=False)

    def _finish(self, outcome: str) -> None:
        elapsed = time.monotonic() - self._started
        if self._status is not None:
            self._status.stop()
            self._status = None
        if not self.quiet:
            self.console.print(f"{'ok ' if outcome == 'done' else 'FAILED'} {self._step} ({elapsed:.1f} s)", markup=False)
