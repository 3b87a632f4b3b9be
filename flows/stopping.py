"""Stop a run at its next safe point on SIGTERM or SIGINT, instead of dying mid-batch or ignoring the signal.

Both flows keep each finished batch (the index commits it, the answer flow writes its part), so the safe point
is between batches: the first signal prints "stopping after the current batch…" at once and no new batch is
started; the batches in flight finish and are kept, and the flow raises :class:`RunStopped` (the CLI exits
128 + the signal's number). A second signal ends the process at once, by the signal's default action: handing
it to Prefect's handler (or KeyboardInterrupt) would still wait for the batch's thread, which measured 29 s.
Kept batches and commits are atomic (tested with kill points), so a re-run resumes either way.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunStopped(RuntimeError):
    """A run stopped between batches on a signal; its finished batches are kept, so the same command resumes."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


@dataclass
class StopSignal:
    """The signal asked for, if any (``signum``); ``requested`` is what the flows' batch loops check."""

    what: str
    signum: int | None = None

    def requested(self) -> bool:
        return self.signum is not None

    def stopped(self, done: str) -> RunStopped:
        """The exception a flow raises once it stopped: ``done`` says what was kept."""
        name = signal.Signals(self.signum or signal.SIGTERM).name
        return RunStopped(f"{self.what} stopped by {name}: {done}; run the same command again to resume",
                          self.signum or signal.SIGTERM)


@contextmanager
def stop_between_batches(what: str) -> Iterator[StopSignal]:
    """Within the block, SIGTERM / SIGINT ask the flow to stop at its next batch boundary (see above).

    Signals can be handled only in the main thread: elsewhere (a flow run by a worker thread) the block changes
    nothing and the signals keep their handlers.
    """
    stop = StopSignal(what)
    before: dict[int, Any] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.signum is not None:  # the second signal: die now, as with no handler at all
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        stop.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping {what} after the current batch… (finished batches are "
              "kept; signal again to stop now)", file=sys.stderr, flush=True)

    try:
        for s in _SIGNALS:
            before[s] = signal.signal(s, handler) or signal.SIG_DFL  # None: installed outside Python
    except ValueError:  # not the main thread
        pass
    try:
        yield stop
    finally:
        for s, h in before.items():
            signal.signal(s, h)
