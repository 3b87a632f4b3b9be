"""Which kernel scores a float32 matrix on this machine: measured here, once, not assumed.

The fastest matmul differs between our CPUs (benchmarks/RESULTS.md): on the Intel Xeon with AMX a bfloat16
matmul is ~3x float32, and torch's MKL and numpy's OpenBLAS float32 are about even; on the AMD Zen 4 OpenBLAS
float32 beat MKL by 1.6x. Every kernel gives the same result (their scores are rescored exactly:
tasks/retrieval/backends/rescore.py), so the choice is only about speed, and is made by timing each candidate
on the index's own rows: the whole search (matmul, candidate selection, rescoring) of 1,024 random unit
queries, best of three, over up to 65,536 of its rows. The row count matters: a bfloat16 kernel rescores more
candidates, a cost that grows with the log of the rows while the matmul it saves grows with the rows, so on the
AMX machine float32 wins at 16k rows and bfloat16 by 2x at 200k. The measurement is stored per machine
(storage/calibration.py, keyed by :func:`tasks.device.numerics_id`, the dimension and the sample's size class:
4k, 16k or 64k rows and up) and reused; ``RAGBATCH_SEARCH_KERNEL`` forces a kernel.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import time
from collections.abc import Callable

import torch

from storage.calibration import calibration_path, read_calibration, write_calibration
from tasks.device import cpu_has_native_bf16, memory_bytes, numerics_id
from tasks.retrieval.backends.rescore import KERNELS, Kernel

log = logging.getLogger(__name__)
KERNEL_ENV = "RAGBATCH_SEARCH_KERNEL"
CALIBRATION_QUERIES = 1024
SIZE_CLASSES = (4096, 16384, 65536)  # calibrated sample sizes; an index of ≥ 65,536 rows is timed on 65,536
# Raised whenever the search's own costs change (rescore.py, dense.py), so that timings stored by an older search,
# which may favour another kernel, are measured again. 2: first threshold from group maxima, rescoring by query block.
SEARCH_VERSION = 2


def candidates(device: str, copy_bytes: int = 0) -> list[str]:
    """The kernels worth timing on ``device``: bfloat16 only where it is native (emulated, it is several times
    slower than float32: tasks/device.py), numpy's OpenBLAS only on a CPU, float16 only on a GPU. A 16-bit kernel
    needs its own copy of the matrix (``copy_bytes``): it is not a candidate unless that copy leaves a quarter of
    the device's available memory free, so a large index never runs out of memory for speed."""
    if device.startswith("cuda"):
        half = ["float16"] + (["bfloat16"] if torch.cuda.is_bf16_supported() else [])
        return ["float32"] + (half if _room(device, copy_bytes) else [])
    half = ["bfloat16"] if cpu_has_native_bf16() and _room(device, copy_bytes) else []
    return ["float32", "float32-numpy", *half]


def _room(device: str, copy_bytes: int) -> bool:
    """Whether ``copy_bytes`` fit in three quarters of the device's available memory (unknown: assume so)."""
    if copy_bytes <= 0:
        return True
    if device.startswith("cuda"):
        available = torch.cuda.mem_get_info(torch.device(device))[0]
    else:
        available = memory_bytes("MemAvailable")
        if available is None:
            return True
    return copy_bytes <= 0.75 * available


def size_class(rows: int) -> int:
    """The calibrated sample size for an index of ``rows`` rows: the largest class it reaches (the smallest
    class for a smaller index)."""
    return max([c for c in SIZE_CLASSES if c <= rows], default=SIZE_CLASSES[0])


def machine_key(device: str, dim: int, rows: int) -> str:
    """What a measurement holds for: the device's numerics (CPU features, torch, threads), the dimension, the
    size class, and the version of the search it timed."""
    return f"{numerics_id(device)}|dim={dim}|rows={size_class(rows)}|search={SEARCH_VERSION}"


def choose_kernel(device: str, sample: torch.Tensor, timer: Callable[[str], float] | None = None,
                  rows: int | None = None) -> Kernel:
    """The kernel to score a float32 matrix of ``rows`` rows with (default: ``sample``'s); ``sample``: its
    first rows, at least ``size_class`` of them where it has them (those are timed). ``timer(name)`` →
    seconds replaces the timing (tests pass a fake clock)."""
    names = candidates(device, 2 * (rows or sample.shape[0]) * sample.shape[1])
    forced = os.environ.get(KERNEL_ENV)
    if forced:
        if forced not in KERNELS or forced not in names:
            raise ValueError(f"{KERNEL_ENV}={forced!r} is not a kernel for {device}; choose one of "
                             f"{', '.join(names)}")
        return KERNELS[forced]
    key = machine_key(device, sample.shape[1], sample.shape[0])
    return KERNELS[_chosen(device, key, sample[: size_class(sample.shape[0])], names, timer)]


def _chosen(device: str, key: str, sample: torch.Tensor, names: list[str],
            timer: Callable[[str], float] | None) -> str:
    entry = read_calibration().get(key)
    ms = entry.get("ms") if isinstance(entry, dict) else None
    if isinstance(ms, dict) and all(isinstance(ms.get(n), int | float) for n in names):
        return min(names, key=lambda n: (ms[n], names.index(n)))  # measured before: every candidate has a time
    ms = {name: 1000 * (timer or functools.partial(time_kernel, sample=sample, device=device))(name)
          for name in names}
    chosen = min(names, key=lambda n: (ms[n], names.index(n)))
    write_calibration(key, {"chosen": chosen, "ms": {n: round(v, 3) for n, v in ms.items()},
                            "rows": sample.shape[0],
                            "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})
    log.info("search kernel for %s rows on %s: %s (%s; measured once, kept in %s)", f"{sample.shape[0]:,}",
             device, chosen, ", ".join(f"{n} {v:.0f} ms" for n, v in ms.items()), calibration_path())
    return chosen


def time_kernel(name: str, sample: torch.Tensor, device: str, repeats: int = 3) -> float:
    """Seconds for the best of ``repeats`` exact searches (k = 10) of 1,024 random unit queries over
    ``sample``, scored by kernel ``name`` (after one warm-up)."""
    from tasks.retrieval.backends.dense import ExactDense, ScoringCopy

    rows = sample.to(device, torch.float32)
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(CALIBRATION_QUERIES, rows.shape[1], generator=g), dim=1)
    index = ExactDense([rows], [None], [0], ScoringCopy(KERNELS[name], [rows]))
    best = float("inf")
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        index.search(q.to(device), 10)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i:
            best = min(best, time.perf_counter() - t0)
    return best
