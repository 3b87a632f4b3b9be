"""Benchmark: exact dense search (ours: per-shard matmul + topk, merged) vs FAISS IndexFlatIP, one run.

    python benchmarks/search.py                      # 200k x 384 random unit vectors, 1k queries, k=10, CPU
    python benchmarks/search.py --rows 5000000 --device cuda --dtype float16   # GPU

Prints queries/s of both, the ratio, and whether the results are equal (ids; scores within 1e-5).
On a GPU it also reports the achieved bandwidth: bytes of the matrix read per query batch / time.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasks.retrieve import DenseIndex  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--query-batch", type=int, default=1024)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(args.rows, args.dim, generator=g), dim=1)
    q = torch.nn.functional.normalize(torch.randn(args.queries, args.dim, generator=g), dim=1)
    dtype = getattr(torch, args.dtype)
    per = -(-args.rows // args.shards)
    shards = [x[i : i + per].to(args.device, dtype) for i in range(0, args.rows, per)]
    offsets = [i for i in range(0, args.rows, per)]
    index = DenseIndex(None, 1, {}, shards, offsets, None)  # chunks table is not needed for search
    index.chunks = _Rows(args.rows)

    def ours():
        hits = index.search(q.to(args.device), args.k, query_batch=args.query_batch)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return hits

    timings = {"ragbatch": [], "faiss": []}
    ours()  # warm-up
    res_ours = None
    res_faiss = None
    try:
        import faiss

        fi = faiss.IndexFlatIP(args.dim)
        fi.add(x.numpy())
        qn = q.numpy()
        fi.search(qn[:10], args.k)
    except ImportError:
        fi = None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        res_ours = ours()
        timings["ragbatch"].append(time.perf_counter() - t0)
        if fi is not None:
            t0 = time.perf_counter()
            res_faiss = fi.search(qn, args.k)
            timings["faiss"].append(time.perf_counter() - t0)
    gpu = f" {torch.cuda.get_device_name(0)}" if args.device.startswith("cuda") else ""
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores{gpu}; torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}; device {args.device}, dtype {args.dtype}")
    print(f"{args.rows} x {args.dim} rows in {len(shards)} shards, {args.queries} queries, k={args.k}")
    best_ours = min(timings["ragbatch"])
    print(f"{'ragbatch':>10}: {args.queries / best_ours:9.0f} queries/s ({best_ours * 1e3:.1f} ms, best of "
          f"{args.repeats})")
    if args.device.startswith("cuda"):
        gbytes = args.rows * args.dim * shards[0].element_size() / 1e9
        batches = -(-args.queries // args.query_batch)
        print(f"{'':>10}  matrix read {batches}x: {gbytes * batches / best_ours:.0f} GB/s achieved")
    if fi is not None:
        best_f = min(timings["faiss"])
        print(f"{'faiss':>10}: {args.queries / best_f:9.0f} queries/s ({best_f * 1e3:.1f} ms) IndexFlatIP, "
              f"{faiss.omp_get_max_threads()} threads")
        print(f"{'ratio':>10}: {best_f / best_ours:.2f}x (ours / FAISS)")
        ids_equal = torch.equal(res_ours.rows, torch.from_numpy(res_faiss[1]).long())
        mism = (res_ours.rows != torch.from_numpy(res_faiss[1]).long()).any(1).sum().item()
        close = torch.allclose(res_ours.scores.float(), torch.from_numpy(res_faiss[0]), atol=1e-3 if
                               args.dtype != "float32" else 1e-5)
        print(f"{'equal':>10}: ids {ids_equal} ({mism} of {args.queries} queries differ), scores close {close}")


class _Rows:
    def __init__(self, n: int):
        self.num_rows = n


if __name__ == "__main__":
    main()
