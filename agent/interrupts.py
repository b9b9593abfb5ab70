"""Ctrl-C and SIGTERM during a search: deferred while a candidate lands, so a signal never cuts
a record, a cache line or an MLflow write in half; a second one stops at once."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any


class Interrupts:
    """SIGINT and SIGTERM, deferred while `defer` is set.

    The first signal sets `requested` (the loop stops at its next `check`); a second one, or
    one while not deferring, raises `KeyboardInterrupt` at once. `install` replaces the handlers
    (main thread only: signals reach no other); `restore` puts the previous ones back.
    """

    def __init__(self) -> None:
        self.defer = False
        self.requested = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals only reach the main thread; elsewhere Ctrl-C is the caller's
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested or not self.defer:
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        """Raise `KeyboardInterrupt` if a deferred signal is waiting."""
        if self.requested:
            raise KeyboardInterrupt

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
