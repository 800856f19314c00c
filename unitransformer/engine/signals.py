"""Ctrl-C and SIGTERM as requests to stop training cleanly, after the step under way.

A kill loses the steps since the last checkpoint; a batch scheduler's SIGTERM (preemption, the
end of a time slot) or Ctrl-C need not. While the loop runs, the first SIGINT or SIGTERM only
marks a stop as requested: the loop finishes its step, writes a checkpoint and returns, and the
same command resumes from exactly there. A second signal interrupts at once, as usual.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = ["StopSignals"]

log = logging.getLogger("unitransformer")


class StopSignals:
    """Records the first SIGINT / SIGTERM instead of dying of it; a second one raises.

    Attributes:
        received: The name of the first signal received (``"SIGINT"``, ``"SIGTERM"``), or None.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: str | None = None

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            raise KeyboardInterrupt  # Asked twice: the user means now.
        self.received = signal.Signals(signum).name
        log.warning(
            "%s: stopping after this step with a checkpoint (send it again to stop at once)",
            self.received,
        )

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        """Handles the signals inside the block and restores the previous handlers after it.

        Python lets only the main thread set handlers; elsewhere (a training thread of a
        notebook or a test runner) the block runs with the process's handlers unchanged.
        """
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handler) for s in self.SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
