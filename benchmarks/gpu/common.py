"""Shared plumbing of the GPU readiness benchmark (``benchmarks/gpu/main.py`` and its ``gpu_*`` part modules).

Importing this module sets the clock every part's budget counts from (``T_START``: process start, imports
included, as ``benchmarks/gpu/main.py`` imports it first), puts the repository root on ``sys.path`` and keeps the
Hugging Face libraries offline.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import platform
import sys
import time
import traceback
import types
from pathlib import Path

T_START = time.monotonic()  # budgets count from process start, imports included
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
for _k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_k, "1")

PARTS = ("embed", "search", "generate")
DATASHEET_BW = {"H200": 4.8e12, "H100 SXM": 3.35e12, "H100 PCIe": 2.0e12, "H100": 3.35e12, "A100-SXM4-80GB": 2.039e12,
                "A100": 1.555e12, "L40S": 0.864e12, "L4": 0.3e12}


class Deadline:
    """``seconds`` after process start (imports included); ``Deadline.after(s)``: ``s`` seconds from now."""

    def __init__(self, seconds: float):
        self.end = T_START + seconds

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() - T_START + seconds)

    def left(self) -> float:
        return self.end - time.monotonic()


class Results:
    """One part's results file, rewritten (atomically) after every row, so a killed part keeps its rows."""

    def __init__(self, folder: Path, part: str, **meta):
        self.path = Path(folder) / f"{part}.json"
        self.data = {"part": part, "status": "running", "meta": meta, "rows": [], "notes": []}
        self.save()

    def add(self, row: dict) -> None:
        self.data["rows"].append(row)
        self.save()

    def note(self, msg: str) -> None:
        print(f"  note: {msg}", flush=True)
        self.data["notes"].append(msg)
        self.save()

    def finish(self, status: str = "done") -> None:
        self.data["status"] = status
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        os.replace(tmp, self.path)


@contextlib.contextmanager
def guarded(res: Results, label: str):
    """Runs the block; an exception is printed and noted as ``<label>: failed: ...``, and the part goes on."""
    try:
        yield
    except Exception as exc:  # one measurement failing must not stop the others
        traceback.print_exc()
        res.note(f"{label}: failed: {type(exc).__name__}: {exc}")


def dtype_name(dtype) -> str:
    """``torch.float16`` -> ``"float16"``."""
    return str(dtype).removeprefix("torch.")


def pick_device(smoke: bool) -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if smoke:
        return "cpu"
    raise SystemExit("no CUDA device visible: the full run needs a GPU (use --smoke for the CPU smoke test)")


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, fn, *args, **kwargs):
    """(seconds, result) of ``fn(*args, **kwargs)``, the device synchronized before and after."""
    sync(device)
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    sync(device)
    return time.perf_counter() - t0, out


def free(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def accepts(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def fmt(x, spec: str = ".1f", none: str = "-") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return none
    return format(x, spec)


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def peak_bandwidth() -> tuple[float | None, str]:
    """The device's memory bandwidth in bytes/s, from the device itself where it says (DDR: 2 x clock x bus)."""
    import torch

    if not torch.cuda.is_available():
        return None, "no GPU"
    props = torch.cuda.get_device_properties(0)
    clk, bus = getattr(props, "memory_clock_rate", None), getattr(props, "memory_bus_width", None)  # kHz, bits
    if clk and bus:
        return 2 * clk * 1e3 * bus / 8, f"device properties: memory clock {clk / 1e3:.0f} MHz x {bus}-bit bus x 2"
    with contextlib.suppress(Exception):
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        clk = pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_MEM)  # MHz
        bus = pynvml.nvmlDeviceGetMemoryBusWidth(h)
        if clk and bus:
            return 2 * clk * 1e6 * bus / 8, f"NVML: max memory clock {clk} MHz x {bus}-bit bus x 2"
    with contextlib.suppress(Exception):
        import cupy

        p = cupy.cuda.runtime.getDeviceProperties(0)
        clk, bus = p["memoryClockRate"], p["memoryBusWidth"]
        if clk and bus:
            return 2 * clk * 1e3 * bus / 8, f"CUDA runtime (cupy): memory clock {clk / 1e3:.0f} MHz x {bus}-bit x 2"
    key, bw = datasheet_bandwidth(torch.cuda.get_device_name(0))
    if key is not None:
        return bw, f"datasheet value for {key} (the device did not report its memory clock)"
    return None, "unknown (the device did not report it)"


def datasheet_bandwidth(name: str) -> tuple[str | None, float | None]:
    """(key, bytes/s) of the first DATASHEET_BW entry whose key is in the device name ``name``; (None, None)."""
    return next(((key, bw) for key, bw in DATASHEET_BW.items() if key in name), (None, None))


def stub_tantivy(res: Results | None) -> None:
    """tasks.retrieval.search imports storage.store.base, which imports tantivy (BM25 only); stand a stub in where
    it is missing."""
    try:
        import tantivy  # noqa: F401
    except ImportError:
        sys.modules["tantivy"] = types.ModuleType("tantivy")
        if res is not None:
            res.note("tantivy is not installed here: a stub module stands in for it (BM25 is not benchmarked)")
