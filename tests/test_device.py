"""Dtype choice: read off the machine's CPU flags, overridable, never guessed."""

from __future__ import annotations

import platform

import pytest
import torch

from tasks.device import (
    DTYPE_CHOICES,
    auto_dtype,
    cpu_flags,
    cpu_has_native_bf16,
    dtype_name,
    memory_bytes,
    resolve_dtype,
)
from tasks.generation.generate import load_generator

X86 = platform.machine().lower() in ("x86_64", "amd64")


@pytest.mark.skipif(not X86, reason="the bf16 flags are x86's")
def test_native_bf16_is_read_from_the_cpu_flags() -> None:
    assert cpu_has_native_bf16(frozenset({"avx512f", "avx512_bf16"}))  # Zen 4, Cooper Lake
    assert cpu_has_native_bf16(frozenset({"amx_bf16", "amx_tile"}))  # Sapphire Rapids and later
    assert not cpu_has_native_bf16(frozenset({"avx2", "avx512f", "avx512bw"}))  # AVX-512 without bf16
    assert not cpu_has_native_bf16(frozenset())


def test_flags_come_from_proc_cpuinfo(tmp_path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(str(info)) == frozenset({"fpu", "sse2", "avx2", "avx512_bf16"})
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_memory_figures_come_from_proc_meminfo(tmp_path) -> None:
    info = tmp_path / "meminfo"
    info.write_text("MemTotal:       24594416 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n")
    assert memory_bytes("MemTotal", str(info)) == 24594416 * 1024
    assert memory_bytes("MemAvailable", str(info)) == 20000000 * 1024
    assert memory_bytes("Mem", str(info)) is None  # a prefix of a field is not that field
    assert memory_bytes("MemTotal", str(tmp_path / "missing")) is None


def test_this_machine_gets_the_dtype_its_flags_call_for() -> None:
    want = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert auto_dtype("cpu") == resolve_dtype("auto", "cpu") == resolve_dtype(None, "cpu") == want
    assert auto_dtype("cpu", half_ok=False) == torch.float32
    gen = load_generator("smollm2-135m", device="cpu")
    assert gen.dtype == dtype_name(want) and next(gen.model.parameters()).dtype == want


def test_explicit_dtype_wins_and_bad_names_are_refused() -> None:
    assert [resolve_dtype(d, "cpu") for d in DTYPE_CHOICES[1:]] == [torch.float32, torch.bfloat16, torch.float16]
    assert resolve_dtype(torch.float16, "cpu") == torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        resolve_dtype("fp8", "cpu")
    with pytest.raises(ValueError, match="unsupported dtype"):
        resolve_dtype(torch.int8, "cpu")
