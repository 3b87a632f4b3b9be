"""Task runners for the flows: Prefect's thread pool (default) or a Dask cluster (``prefect-dask``).

The flows do not change with the runner: ``run_index`` / ``run_answer`` call ``flow.with_options(task_runner=...)``.
Only submitted tasks go to the runner: the index flow submits one ``chunk-embed-batch`` task per document batch
(at most ``parallel_batches`` in flight), so on Dask each worker chunks, embeds and writes its own shard while
the flow process commits them; the answer flow submits one ``answer-batch`` task (retrieve + generate) per
question batch the same way, and the flow process writes each finished batch.
"""

from __future__ import annotations

import subprocess
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from prefect.server.api.server import SubprocessASGIServer

RUNNERS = ("threads", "dask")

T = TypeVar("T")


def run_flow(flow: Any, args: tuple, kw: dict[str, Any], runner: str = "threads", address: str | None = None,
             workers: int = 2) -> Any:
    """Call ``flow(*args, **kw)`` on the chosen task runner: directly for threads; on Dask with one batch in
    flight per worker (``parallel_batches``, unless given); both against :func:`prefect_api`."""
    with prefect_api():
        if runner == "threads" and not address:
            return flow(*args, **kw)
        fl = flow.with_options(task_runner=task_runner(runner, address, workers))
        kw.setdefault("parallel_batches", parallel_batches(runner, workers))
        return fl(*args, **kw)


def in_order(submit: Callable[[T], Any], items: Iterable[T], parallel: int = 1,
             stop: Callable[[], bool] | None = None) -> Iterator[tuple[T, Any]]:
    """Submit every item (``submit`` returns a future), at most ``parallel`` in flight; yield ``(item, result)``
    in submission order, so the flow commits or keeps each finished batch in order.

    One batch at a time is right for one device (torch already uses every core); on Dask, one per worker.
    ``items`` is read only as batches are submitted (a question file is streamed through it). Once ``stop()``
    is true no further item is taken; those in flight still finish and are yielded (flows/stopping.py).
    """
    pending: deque[tuple[T, Any]] = deque()
    source = iter(items)
    while stop is None or not stop():
        item = next(source, _END)
        if item is _END:
            break
        pending.append((item, submit(item)))
        while len(pending) >= max(1, parallel):
            done, future = pending.popleft()
            yield done, future.result()
    while pending:
        done, future = pending.popleft()
        yield done, future.result()


_END: Any = object()


def task_runner(kind: str = "threads", address: str | None = None, workers: int = 2) -> Any:
    """A Prefect task runner.

    ``threads``: Prefect's ``ThreadPoolTaskRunner``. ``dask``: ``prefect_dask.DaskTaskRunner`` on an existing
    cluster when ``address`` is given (``tcp://scheduler:8786``), else on a temporary ``LocalCluster`` of
    ``workers`` processes with one thread each, bound to 127.0.0.1, dashboard off. Each local worker's torch
    gets as many threads as this process's: a linear layer's rounding depends on its thread count (oneDNN
    splits the work by it), so only then are the workers' embeddings and answers the thread runner's, bit for
    bit. With 2 workers on 2 cores they share the cores; measured cost in benchmarks/RESULTS.md.
    """
    if kind == "threads":
        if address:
            raise ValueError("--dask-address needs --runner dask")
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner()
    if kind != "dask":
        raise ValueError(f"unknown task runner {kind!r}: use one of {', '.join(RUNNERS)}")
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:  # an optional dependency
        raise RuntimeError("the dask runner needs prefect-dask: pip install -e '.[dask]'") from exc
    if address:
        return DaskTaskRunner(address=address)
    if workers < 1:
        raise ValueError(f"--dask-workers must be at least 1, got {workers}")
    import torch

    threads = str(torch.get_num_threads())
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": None,
            # Dask's nanny pins OMP/MKL threads to 1 per worker; give each this process's count instead (above).
            # PASSIVE: an idle OpenMP thread sleeps instead of spinning on a core another worker needs.
            "env": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
                    "OMP_WAIT_POLICY": "PASSIVE"},
        },
    )


def parallel_batches(kind: str = "threads", workers: int = 2) -> int:
    """How many batches to keep in flight: one per Dask worker; one for threads (torch uses every core)."""
    return max(1, workers) if kind == "dask" else 1


@contextmanager
def prefect_api() -> Iterator[None]:
    """Run flows against ``PREFECT_API_URL`` when set, else against a temporary server that dies with us.

    Prefect's own temporary server (what a flow starts when no API is configured) outlives a SIGKILLed parent:
    a uvicorn of ~220 MB holding a port, re-parented to init, one more after every killed scheduled run. Ours is
    the same server started the same way, but its process asks the kernel for SIGTERM when its parent dies
    (``PR_SET_PDEATHSIG``, Linux). It is started once per process, stopped at exit, and its URL is also what
    Dask workers report to: without it each worker process would start a server of its own (≈ 25 s each, and
    its task runs would not show with the flow run).
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    server = _OrphanSafeServer()
    server.start()
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        yield


def _deathsig_hook() -> Any:
    """A ``preexec_fn`` that asks for SIGTERM when the parent dies, or None off Linux.

    prctl is looked up here, in the parent: the child between fork and exec must not load libraries.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import signal

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


class _OrphanSafeServer(SubprocessASGIServer):
    """Prefect's temporary server, whose process gets SIGTERM when ours dies (see :func:`prefect_api`)."""

    _instances: dict = {}  # not Prefect's: its own singleton would be another, unprotected server

    def _run_uvicorn_command(self) -> subprocess.Popen:
        popen, hook = subprocess.Popen, _deathsig_hook()

        def with_deathsig(*a: Any, **kw: Any) -> subprocess.Popen:
            kw.setdefault("preexec_fn", hook)
            return popen(*a, **kw)

        # Prefect builds the uvicorn command line and environment; only the child's set-up is ours. Popen is
        # swapped for this one call (at start-up, before any flow runs its tasks in threads).
        subprocess.Popen = with_deathsig  # type: ignore[misc]
        try:
            return super()._run_uvicorn_command()
        finally:
            subprocess.Popen = popen  # type: ignore[misc]
