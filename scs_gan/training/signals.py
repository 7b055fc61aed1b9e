"""Ctrl-C and SIGTERM as a request to stop at the next step boundary, with the state saved."""

from __future__ import annotations

import contextlib
import signal
from typing import Any


class StopSignals:
    """Turns SIGINT/SIGTERM into a flag checked at step boundaries; a second signal stops at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def name(self) -> str:
        """``SIGTERM`` or ``SIGINT``: the signal received (SIGINT if none)."""
        return "SIGTERM" if self.received == signal.SIGTERM else "SIGINT"

    @property
    def exit_code(self) -> int:
        """The conventional exit code after that signal: 143 for SIGTERM, 130 for SIGINT."""
        return 143 if self.received == signal.SIGTERM else 130
