"""Benchmark: exact dense search (ours: packed matrices, every scoring kernel, exact rescoring) vs FAISS IndexFlatIP.

    python benchmarks/search.py                              # 2.5k, 20k, 200k and 1M x 384 rows, CPU
    python benchmarks/search.py --rows 200000 --repeats 5    # one size
    python benchmarks/search.py --rows 5000000 --device cuda --dtype float16   # GPU

For each size, random unit vectors are split into ``--shards`` store shards and packed the way
``load_dense_index`` packs them (tasks/retrieval/loaded_index.py), then ours and FAISS are timed alternately in the
same run
(best of ``--repeats``), so both see the same machine load. Ours is timed with every scoring kernel this
machine has (tasks/retrieval/backends/kernels.py: float32 through torch, float32 through numpy's OpenBLAS,
bfloat16 where native) and with the one the index chooses by its own calibration ("auto"). Prints queries/s,
each ratio to FAISS, whether every kernel returned identical ids and scores, whether FAISS's ids are the same
(its float32 scores can order near-ties differently), and the 1-minute load average before and after each
size.
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

from tasks.device import cpu_flags, cpu_name  # noqa: E402
from tasks.retrieval.backends.dense import ExactDense, ScoringCopy  # noqa: E402
from tasks.retrieval.backends.kernels import candidates  # noqa: E402
from tasks.retrieval.backends.rescore import KERNELS  # noqa: E402
from tasks.retrieval.loaded_index import LoadedGeneration, RowPacker  # noqa: E402


def main() -> None:
    if "OPENBLAS_CORETYPE" not in os.environ and "avx512f" in cpu_flags():
        # FAISS's wheel bundles OpenBLAS 0.3.15, which does not know Sapphire Rapids and falls back to its
        # generic "Prescott" kernels: 4x slower sgemm (3.7 vs 0.9 s for FAISS at 200k rows here). The peer is
        # measured at its best, so name the AVX-512 core it does know (numpy's newer OpenBLAS reads it too).
        os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
        os.execv(sys.executable, [sys.executable, *sys.argv])
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
    print(f"machine: {platform.machine()} {cpu_name()}, {os.cpu_count()} cores{gpu}; torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}; faiss {faiss.__version__ if faiss else 'absent'}; device "
          f"{args.device}, dtype {args.dtype}; {args.queries} queries, k={args.k}, {args.shards} store shards, "
          f"best of {args.repeats}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '-')}")
    names = ["auto"] + (candidates(args.device) if args.dtype == "float32" else [])
    print(f"{'rows':>9} " + " ".join(f"{n[:9]:>9}" for n in names) + f" {'faiss':>9} {'auto':>7} {'best':>7}"
          "  (queries/s; ratios to faiss)")
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
    t0 = time.perf_counter()
    auto = index.dense  # the calibration runs here, once per machine (then it is read from its file)
    setup = time.perf_counter() - t0
    runs = {"auto": auto}
    if args.dtype == "float32":
        for name in candidates(args.device):
            runs[name] = ExactDense(blocks, scales, offsets, ScoringCopy(KERNELS[name], blocks))

    def timed(fn):
        # Let the previous contender's threads go idle first: OpenBLAS and OpenMP workers spin for a while after
        # a call and, on 2 cores, slowed whatever ran next by up to 1.8x.
        time.sleep(0.5)
        t0 = time.perf_counter()
        out = fn()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0, out

    fi = None
    if faiss is not None:
        fi = faiss.IndexFlatIP(args.dim)
        fi.add(x.numpy())
        qn = q.numpy()
        fi.search(qn[:10], args.k)
    del x
    timings: dict[str, list[float]] = {name: [] for name in [*runs, "faiss"]}
    results: dict[str, object] = {}
    for dense in runs.values():  # warm-up
        dense.search(qd, args.k, args.query_batch)
    for _ in range(args.repeats):  # alternately, so all see the same load
        for name, dense in runs.items():
            t, results[name] = timed(lambda d=dense: d.search(qd, args.k, args.query_batch))
            timings[name].append(t)
        if fi is not None:
            t, results["faiss"] = timed(lambda: fi.search(qn, args.k))
            timings["faiss"].append(t)
    qps = {name: args.queries / min(ts) for name, ts in timings.items() if ts}
    ref = results["auto"]
    same = all(torch.equal(h.rows, ref.rows) and torch.equal(h.scores, ref.scores)
               for name, h in results.items() if name != "faiss")
    cells = [f"{rows:>9}"] + [f"{qps[n]:>9.0f}" for n in runs]
    if fi is not None:
        f_rows = torch.from_numpy(results["faiss"][1]).long()
        mism = int((ref.rows != f_rows).any(1).sum())
        cells += [f"{qps['faiss']:>9.0f}", f"{qps['auto'] / qps['faiss']:>6.2f}x",
                  f"{max(qps[n] for n in runs) / qps['faiss']:>6.2f}x"]
        equal = f"{'same' if same else 'DIFFER'}; faiss ids {'same' if mism == 0 else f'{mism} q differ'}"
    else:
        equal = f"{'same' if same else 'DIFFER'}; faiss absent"
    chosen = auto.scoring.kernel.name if auto.scoring else args.dtype
    print(" ".join(cells) + f"  {equal:<26} auto={chosen} (calibration {setup:.2f} s) load "
          f"{load0:.2f} / {os.getloadavg()[0]:.2f}", flush=True)
    if args.device.startswith("cuda"):
        gbytes = rows * args.dim * blocks[0].element_size() / 1e9
        batches = -(-args.queries // (args.query_batch or args.queries))
        print(f"{'':>9} matrix read {batches}x: {gbytes * batches / min(timings['auto']):.0f} GB/s achieved")


class _Rows:
    def __init__(self, n: int):
        self.num_rows = n


if __name__ == "__main__":
    main()
