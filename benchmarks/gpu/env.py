"""GPU readiness, part ``env``: versions, what each part needs and cannot import, the device and its bandwidth.

Writes ``RESULTS/env.json``; exits 3 when no CUDA device is visible outside smoke mode (gpu.sh then stops).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

from common import datasheet_bandwidth, fmt, free, peak_bandwidth, sync, timed

NEEDS = {"torch": "all", "transformers": "embed, generate", "sentence-transformers": "embed (the peer)",
         "tokenizers": "embed", "safetensors": "embed (model folders), tasks.retrieval.search", "pyarrow":
         "tasks.retrieval.search",
         "tqdm": "tasks.*"}


def copy_bandwidth(device: str, nbytes: int = 2 << 30) -> float | None:
    """Achieved device-to-device copy bandwidth (bytes read + written per second): the practical ceiling."""
    import torch

    if not device.startswith("cuda"):
        return None
    a = torch.empty(nbytes // 2, dtype=torch.float16, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    sync(device)
    best = float("inf")
    for _ in range(5):
        t, _ = timed(device, b.copy_, a)
        best = min(best, t)
    del a, b
    free(device)
    return 2 * nbytes / best


def versions() -> dict[str, str | None]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "sentence-transformers", "tokenizers", "safetensors", "pyarrow", "tqdm",
                 "numpy", "faiss-gpu", "faiss-gpu-cu12", "faiss-cpu", "faiss", "tantivy", "nvidia-ml-py",
                 "cupy-cuda13x"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def cmd_env(args) -> int:
    v = versions()
    import torch

    env = {"versions": v, "smoke": args.smoke, "cuda": torch.cuda.is_available(), "host": platform.node(),
           "cpus": os.cpu_count(), "torch_cuda": torch.version.cuda}
    print(f"python {v['python']} ({sys.executable}); torch {v['torch']} (CUDA {torch.version.cuda}); "
          f"{os.cpu_count()} CPUs")
    missing = [d for d in NEEDS if v.get(d) is None]
    for d in NEEDS:
        print(f"  {d:22s} {v.get(d) or 'MISSING':12s} needed by {NEEDS[d]}")
    faiss = next((f"{d} {v[d]}" for d in ("faiss-gpu", "faiss-gpu-cu12", "faiss", "faiss-cpu") if v.get(d)), None)
    print(f"  {'faiss':22s} {faiss or 'absent':12s} (FAISS GPU is measured only when faiss has GPU support)")
    print(f"  {'tantivy':22s} {v.get('tantivy') or 'absent':12s} (stubbed for search's import)")
    for d in missing:
        print(f"MISSING {d}: the {NEEDS[d]} part(s) will fail; carry its wheel in .whl/ (see the top of gpu.sh)")
    env["missing"] = missing
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        bw, src = peak_bandwidth()
        cbw = copy_bandwidth("cuda")
        name = torch.cuda.get_device_name(0)
        env["datasheet_bw"] = datasheet_bandwidth(name)[1]
        env.update(gpu=name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                   memory_gib=round(p.total_memory / 2**30, 1), peak_bw=bw, peak_bw_source=src, copy_bw=cbw,
                   bf16=torch.cuda.is_bf16_supported())
        print(f"GPU: {env['gpu']}, cc {env['capability']}, {env['sms']} SMs, {env['memory_gib']} GiB; peak memory "
              f"bandwidth {fmt(bw and bw / 1e12, '.2f')} TB/s ({src}); "
              f"device copy {fmt(cbw and cbw / 1e12, '.2f')} TB/s")
    else:
        print("GPU: none visible" + (" (smoke mode: CPU)" if args.smoke else ""))
    (Path(args.results) / "env.json").write_text(json.dumps(env, indent=1, default=str) + "\n")
    if not torch.cuda.is_available() and not args.smoke:
        print("no CUDA device: the full run needs a GPU (use --smoke for the CPU smoke test)")
        return 3
    return 0
