"""The POSIX writer lock: a file created with O_EXCL, stale take-overs under flock (see :class:`StoreLock`).

One mechanism for the store's writer (``STORE/.lock``) and for a run's output (``RESULTS.parquet.lock``:
:func:`output_lock`), so two runs writing the same thing never both go on.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from storage.store.meta import StoreError

LOCK_FILE = ".lock"
LOCK_GUARD_FILE = ".lock.guard"  # flock()ed while a stale lock is taken over, so two takers cannot race
EMPTY_LOCK_STALE_S = 30.0  # an empty/unreadable lock (writer died between create and write) older than this is stale


class StoreLock:
    """An exclusive writer lock: a file created with O_EXCL holding the owner's pid and host.

    A lock left by a dead process on this host is taken over, and so is a lock file that is empty or
    unreadable (a writer killed between creating and writing it) once it is ``EMPTY_LOCK_STALE_S`` old
    by mtime. Take-overs happen under an ``flock`` on ``.lock.guard`` and re-read the lock there, so
    two writers finding the same stale lock cannot both take it. A lock held by a live process (or
    another host) makes the second writer wait up to ``wait_s`` and then fail with who holds it.
    """

    def __init__(self, path: Path, wait_s: float = 0.0, what: str = "", doing: str = "another index run is writing it"):
        self.path = path
        self.wait_s = wait_s
        self.held = False
        self.what = what or f"store {path.parent}"
        self.doing = doing

    def __enter__(self) -> StoreLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.wait_s
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "doing": self.doing}
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._remove_if_stale():
                    continue
                if time.monotonic() >= deadline:
                    raise StoreError(self._locked_message()) from None
                time.sleep(0.2)
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
                fh.flush()
                os.fsync(fh.fileno())
            self.held = True
            return self

    def __exit__(self, *exc: object) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def _remove_if_stale(self) -> bool:
        """Remove the lock file if its holder is gone; True when there is no lock file any more."""
        guard = self.path.with_name(self.path.name + ".guard")  # the store's: LOCK_GUARD_FILE
        with open(guard, "a") as gh:
            fcntl.flock(gh.fileno(), fcntl.LOCK_EX)
            try:
                try:
                    holder, age = self._holder(), time.time() - self.path.stat().st_mtime
                except FileNotFoundError:
                    return True
                if holder is not None:
                    stale = self._is_stale(holder)
                else:
                    stale = age > EMPTY_LOCK_STALE_S
                if stale:
                    self.path.unlink(missing_ok=True)
                return stale
            finally:
                fcntl.flock(gh.fileno(), fcntl.LOCK_UN)

    def _locked_message(self) -> str:
        holder = self._holder()
        if holder is not None:
            who = f"pid {holder.get('pid')} on {holder.get('host')}"
            if holder.get("since"):
                who += f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(float(holder['since'])))}"
        else:
            who = "an unknown process"
            with contextlib.suppress(OSError):
                age = time.time() - self.path.stat().st_mtime
                who += (
                    f" (the lock file is empty or unreadable, {age:.0f}s old; it counts as stale after "
                    f"{EMPTY_LOCK_STALE_S:.0f}s)"
                )
        doing = (holder or {}).get("doing") or self.doing  # the holder says what it is doing (older ones do not)
        return (
            f"{self.what} is locked by {who} ({doing}); "
            f"wait for it to finish (--wait SECONDS), or remove {self.path} if that process is gone"
        )

    def _holder(self) -> dict[str, Any] | None:
        try:
            obj = json.loads(self.path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return obj if isinstance(obj, dict) and "pid" in obj else None

    @staticmethod
    def _is_stale(holder: dict[str, Any]) -> bool:
        if holder.get("host") != socket.gethostname():
            return False
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, KeyError, ValueError, TypeError, OverflowError):
            return False
        return False


def output_lock(out: Path, wait_s: float = 0.0, doing: str = "an answer run is writing it") -> StoreLock:
    """The lock on a run's output table (and its config, report and parts), ``<out>.lock`` beside it: a second run
    with the same ``--out`` is refused naming the first, or waits ``wait_s`` (``--wait``), instead of silently
    replacing the first run's table."""
    return StoreLock(out.with_name(out.name + ".lock"), wait_s, what=f"output {out}", doing=doing)
