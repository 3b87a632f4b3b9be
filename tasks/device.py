"""Which device and which floating-point type a model runs in, read off the machine itself.

bfloat16 halves memory traffic and, where the CPU multiplies bf16 natively (x86 ``avx512_bf16`` or
``amx_bf16``), runs prefill 2-3x faster than float32. Where it does not, torch emulates bf16 and is several
times *slower* than float32, so the choice must come from the CPU's own feature flags, never from a guess.
``torch.backends.cpu.get_cpu_capability()`` only says ``AVX512`` (not which extensions), and oneDNN's
``_is_mkldnn_bf16_supported`` is true on any AVX-512 core, emulated or not, so the flags are read from
``/proc/cpuinfo``.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch

from tasks.config import DTYPE_CHOICES

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# x86 flags (Linux names) that mean bf16 matmul runs in hardware: Zen 4 / Cooper Lake+ and Sapphire Rapids+.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@functools.cache
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags the kernel reports (empty where there is no /proc/cpuinfo, e.g. macOS)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.cache
def cpu_name(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name, for benchmark reports (``platform.processor()`` where there is no /proc/cpuinfo)."""
    try:
        for line in Path(cpuinfo).read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def memory_bytes(field: str = "MemTotal", meminfo: str = "/proc/meminfo") -> int | None:
    """A ``/proc/meminfo`` figure (``MemTotal``, ``MemAvailable``) in bytes; None where it cannot be read."""
    try:
        for line in Path(meminfo).read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key == field:
                return int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# The CPU features that choose a matmul kernel (and so the last bits of its results), on the machines we run on.
KERNEL_FLAGS = ("amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_vnni", "avx512f", "avx2", "fma")


def numerics_id(device: str) -> str:
    """What a model's output depends on besides its inputs and weights: the device kind, the CPU features that
    pick the kernels, torch's version and its thread count (oneDNN splits work by it). Answers are exact for one
    value of this (tasks/invariant.py), so a cached answer is served only under the same one."""
    if device.startswith("cuda"):
        return f"cuda:{torch.cuda.get_device_name(torch.device(device))}:torch-{torch.__version__}"
    flags = sorted(cpu_flags() & set(KERNEL_FLAGS))
    return f"cpu:{platform.machine()}:{','.join(flags)}:torch-{torch.__version__}:threads-{torch.get_num_threads()}"


def cpu_has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """True where the CPU multiplies bfloat16 in hardware (x86 only; other CPUs get float32)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    return bool((cpu_flags() if flags is None else flags) & NATIVE_BF16_FLAGS)


def auto_dtype(device: str, *, half_ok: bool = True) -> torch.dtype:
    """The fastest dtype that keeps quality on ``device``.

    CUDA: bfloat16, or float16 on GPUs without bf16 (pre-Ampere). CPU: bfloat16 with native bf16 matmul,
    else float32 (float16 is never chosen on a CPU: torch has no fast fp16 matmul there).
    ``half_ok=False`` forces float32, for callers whose measured quality does not survive half precision.
    """
    if not half_ok:
        return torch.float32
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def resolve_dtype(dtype: str | torch.dtype | None, device: str, *, half_ok: bool = True) -> torch.dtype:
    """``auto``/None → :func:`auto_dtype`; a name from :data:`DTYPES` or a torch dtype → itself."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"unsupported dtype {dtype}; choose one of {', '.join(DTYPE_CHOICES)}")
        return dtype
    if dtype in (None, "auto"):
        return auto_dtype(device, half_ok=half_ok)
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_CHOICES)}")
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` → ``"bfloat16"`` (for run configs and logs)."""
    return str(dtype).removeprefix("torch.")
