"""A time- and memory-boxed worker process for parsers that a small hostile file can keep busy for ever.

pypdf's text extraction grows faster than linearly with a content stream (1 MB: 1 s, 4 MB: 18 s), and an 88 KB
PDF whose 60 MB stream is shared by 20 pages did not finish in 180 s: one file could hold a nightly re-index
hostage. So PDF extraction runs in one long-lived ``spawn`` worker: a call that takes longer than its budget is
answered by killing the worker (the next file starts a new one) and refusing that file as "too slow", and the
worker's address space is capped so that a file that would exhaust memory fails alone ("too large").

Where no child process can be started (inside a daemonic process, e.g. a Dask worker), the parser runs in the
calling process without these limits, with a warning.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import threading
from collections.abc import Callable
from typing import Any

from tasks.ingest.loaders.base import LoadError, env_count

log = logging.getLogger(__name__)

SECONDS_ENV = "RAGBATCH_PARSE_SECONDS"
PARSE_SECONDS = 120  # a 1,000-page text PDF extracts in ~30 s on our 2-core machines
MEMORY_ENV = "RAGBATCH_PARSE_MEMORY_MB"
PARSE_MEMORY_MB = 4096


def _serve(conn: Any, memory_mb: int) -> None:
    """The worker's loop: (function, arguments) in, ("ok", result) / ("load", message) / ("error", message) out.

    Settings are read by the caller and passed as arguments: the worker's environment is a copy taken when it
    started."""
    import resource

    limit = memory_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    while True:
        try:
            fn, args = conn.recv()
        except EOFError:
            return
        try:
            conn.send(("ok", fn(*args)))
        except LoadError as exc:
            conn.send(("load", str(exc)))
        except MemoryError:
            conn.send(("load", f"too large: parsing it needed more than {memory_mb} MB ({MEMORY_ENV})"))
        except Exception as exc:  # noqa: BLE001 - reported per file by the caller
            conn.send(("error", f"{type(exc).__name__}: {str(exc)[:300]}"))


class ParserWorker:
    """One worker process, started on first use and replaced after a timeout; calls are serialised."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: Any = None
        self._memory_mb = 0

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the worker, within the time budget; ``fn`` and ``args`` must pickle."""
        seconds = env_count(SECONDS_ENV, PARSE_SECONDS)
        memory_mb = env_count(MEMORY_ENV, PARSE_MEMORY_MB)
        with self._lock:
            if not self._start(memory_mb):
                return fn(*args)
            self._conn.send((fn, args))
            if not self._conn.poll(seconds):
                self.stop()
                raise LoadError(f"too slow: not extracted within {seconds} s ({SECONDS_ENV}); a hostile or "
                                "pathological file?")
            try:
                kind, value = self._conn.recv()
            except EOFError:  # the worker died (killed by the OS, a crash in a C extension)
                self.stop()
                raise LoadError("the parser's worker process died on this file") from None
        if kind == "load":
            raise LoadError(value)
        if kind == "error":
            raise RuntimeError(value)
        return value

    def _start(self, memory_mb: int) -> bool:
        if self._proc is not None and self._proc.is_alive() and self._memory_mb == memory_mb:
            return True
        self.stop()  # dead, or started with another memory cap
        if mp.current_process().daemon:
            log.warning("parsing in-process without a time limit: a daemonic process cannot start a worker")
            return False
        ctx = mp.get_context("spawn")  # never fork a process that may hold torch's threads
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, memory_mb), daemon=True, name="ragbatch-parser")
        self._proc.start()
        child.close()
        self._memory_mb = memory_mb
        return True

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(5)
        self._proc = self._conn = None


WORKER = ParserWorker()
