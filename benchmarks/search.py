"""Benchmark: exact dense search (ours: packed matrices, tiled matmul + topk, exact merge) vs FAISS IndexFlatIP.

    python benchmarks/search.py                              # 2.5k, 20k, 200k and 1M x 384 rows, CPU
    python benchmarks/search.py --rows 200000 --repeats 5    # one size
    python benchmarks/search.py --rows 5000000 --device cuda --dtype float16   # GPU

For each size, random unit vectors are split into ``--shards`` store shards and packed the way
``load_dense_index`` packs them (tasks/retrieval/loaded_index.py), then ours and FAISS are timed alternately in the
same run
(best of ``--repeats``), so both see the same machine load. Prints queries/s of both, the ratio, whether the
results are equal (ids; scores within 1e-5), and the 1-minute load average before and after each size.
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

from tasks.retrieval.loaded_index import LoadedGeneration, RowPacker  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="2500,20000,200000,1000000", help="comma-separated sizes")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--shards", type=int, default=4, help="store shards per size (packed at load, as in a store)")
    ap.add_argument("--query-batch", type=int, default=None, help="queries per matmul (default: as search picks)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    try:
        import faiss
    except ImportError:
        faiss = None
    gpu = f" {torch.cuda.get_device_name(0)}" if args.device.startswith("cuda") else ""
    print(f"machine: {platform.machine()} {_cpu_name()}, {os.cpu_count()} cores{gpu}; torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}; faiss {faiss.__version__ if faiss else 'absent'}; device "
          f"{args.device}, dtype {args.dtype}; {args.queries} queries, k={args.k}, {args.shards} store shards, "
          f"best of {args.repeats}")
    print(f"{'rows':>9} {'ours q/s':>10} {'faiss q/s':>10} {'ratio':>6}  {'equal':<28} load 1-min before/after")
    for rows in (int(r) for r in args.rows.split(",")):
        _one_size(args, rows, faiss)


def _one_size(args: argparse.Namespace, rows: int, faiss) -> None:
    load0 = os.getloadavg()[0]
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(rows, args.dim, generator=g), dim=1)
    q = torch.nn.functional.normalize(torch.randn(args.queries, args.dim, generator=g), dim=1)
    per = -(-rows // args.shards)
    packer = RowPacker(rows, args.device, args.dtype)
    for i in range(0, rows, per):
        packer.add(x[i : i + per])
    blocks, scales, offsets = packer.matrices()
    index = LoadedGeneration(None, 1, {}, blocks, offsets, _Rows(rows), scales)  # search needs only chunks.num_rows
    qd = q.to(args.device)

    def ours():
        hits = index.search(qd, args.k, query_batch=args.query_batch)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return hits

    fi = None
    if faiss is not None:
        fi = faiss.IndexFlatIP(args.dim)
        fi.add(x.numpy())
        qn = q.numpy()
        fi.search(qn[:10], args.k)
    del x
    ours()  # warm-up
    timings: dict[str, list[float]] = {"ours": [], "faiss": []}
    res_ours = res_faiss = None
    for _ in range(args.repeats):  # alternately, so both see the same load
        t0 = time.perf_counter()
        res_ours = ours()
        timings["ours"].append(time.perf_counter() - t0)
        if fi is not None:
            t0 = time.perf_counter()
            res_faiss = fi.search(qn, args.k)
            timings["faiss"].append(time.perf_counter() - t0)
    ours_qps = args.queries / min(timings["ours"])
    line = f"{rows:>9} {ours_qps:>10.0f}"
    if fi is not None and res_ours is not None and res_faiss is not None:
        faiss_qps = args.queries / min(timings["faiss"])
        f_rows = torch.from_numpy(res_faiss[1]).long()
        mism = int((res_ours.rows != f_rows).any(1).sum())
        close = torch.allclose(res_ours.scores.float(), torch.from_numpy(res_faiss[0]),
                               atol=1e-3 if args.dtype != "float32" else 1e-5)
        equal = f"ids {'same' if mism == 0 else f'{mism} queries differ'}, scores {'close' if close else 'FAR'}"
        line += f" {faiss_qps:>10.0f} {ours_qps / faiss_qps:>5.2f}x  {equal:<28}"
    else:
        line += f" {'-':>10} {'-':>6}  {'(faiss absent)':<28}"
    print(f"{line} {load0:.2f} / {os.getloadavg()[0]:.2f}", flush=True)
    if args.device.startswith("cuda"):
        gbytes = rows * args.dim * blocks[0].element_size() / 1e9
        batches = -(-args.queries // (args.query_batch or args.queries))
        print(f"{'':>9} matrix read {batches}x: {gbytes * batches / min(timings['ours']):.0f} GB/s achieved")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


class _Rows:
    def __init__(self, n: int):
        self.num_rows = n


if __name__ == "__main__":
    main()
