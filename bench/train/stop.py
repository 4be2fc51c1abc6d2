"""Ctrl-C during training: stop when the current step ends, with that step's checkpoint saved."""

from __future__ import annotations

import _thread
import signal
import sys
import threading
import time
from types import FrameType, TracebackType

#: Seconds a step may take to end after the first Ctrl-C before the run stops mid-step.
GRACE_S = 5.0


class StopRequest:
    """While entered in the main thread, the first SIGINT asks the training loop to stop when
    the current step ends (the loop then saves a checkpoint of that step and raises
    ``KeyboardInterrupt``); a second SIGINT, or a step still running after `GRACE_S` seconds
    or twice the longest step so far (whichever is longer), stops at once, as Ctrl-C does
    without it (the newest periodic checkpoint stays).

    Python's own handler would raise in the middle of a step, where no consistent state can be
    saved; the standard library has no "stop at the next safe point", so this is that flag.
    In another thread (where a handler cannot be installed) it does nothing.
    """

    def __init__(self, grace_s: float = GRACE_S) -> None:
        self.grace_s = grace_s
        self.requested = False
        self._previous: object = None
        self._timer: threading.Timer | None = None
        self._active = False
        self._last = time.monotonic()
        self._longest = 0.0

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._active = True
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.step_ended()
        if self._active:
            signal.signal(signal.SIGINT, self._previous)  # type: ignore[arg-type]
            self._active = False

    def _handle(self, _signum: int, _frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        wait = max(self.grace_s, 2 * self._longest)
        print(
            f"\nstopping when this step ends (steps here take up to {self._longest:.1f} s; its "
            f"checkpoint is saved and the cell resumes from it); Ctrl-C again stops at once",
            file=sys.stderr,
            flush=True,
        )
        self._timer = threading.Timer(wait, _thread.interrupt_main)
        self._timer.daemon = True
        self._timer.start()

    def step_ended(self) -> bool:
        """Whether a stop was asked for; the grace timer, if any, no longer runs."""
        now = time.monotonic()
        self._longest, self._last = max(self._longest, now - self._last), now
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return self.requested
