"""Benchmark: recall@10 and speed of reduced-precision matrices and FAISS HNSW against exact float32 search.

    python benchmarks/quantize.py --store .ragbatch/squad-store --questions 2000   # real: SQuAD chunks + questions
    python benchmarks/quantize.py --rows 200000                                     # random unit vectors
    python benchmarks/quantize.py --rows 2000000 --device cuda                       # GPU

Our variants (``--matrix-dtype`` float16 / bfloat16 / int8, ``--retriever ann``) run through the same
LoadedGeneration / HNSWIndex code the retrievers use. FAISS peers in the same run: IndexFlatIP (exact float32) and
IndexScalarQuantizer 8-bit (int8 storage). Recall@10 is the share of the exact float32 top-10 that a variant
returns; the issue's bar for a stored reduced-precision matrix is >= 0.99.
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

from tasks.retrieval.backends.ann import HNSWIndex  # noqa: E402
from tasks.retrieval.loaded_index import LoadedGeneration, RowPacker  # noqa: E402


class _Rows:
    def __init__(self, n: int):
        self.num_rows = n


def _packed(parts: list[torch.Tensor], device: str, matrix_dtype: str) -> LoadedGeneration:
    """The parts (store shards) held as ``matrix_dtype`` and packed the way ``load_dense_index`` packs them."""
    packer = RowPacker(sum(p.shape[0] for p in parts), device, matrix_dtype)
    for p in parts:
        packer.add(p)
    blocks, scales, offsets = packer.matrices()
    return LoadedGeneration(None, 1, {}, blocks, offsets, _Rows(packer.rows), scales)


def _recall(rows: torch.Tensor, exact: torch.Tensor) -> float:
    hit = sum(len(set(a) & set(b)) for a, b in zip(rows.tolist(), exact.tolist(), strict=True))
    return hit / exact.numel()


def _timed(fn, repeats: int, device: str):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return out, best


def _real(store: str, n_questions: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    from storage.store import open_store
    from tasks.evaluation.datasets import load_eval_dataset
    from tasks.indexing.embed import load_embedder, resolve_embedder
    from tasks.retrieval.search import load_dense_index

    idx = load_dense_index(open_store(store), "cpu", matrix_dtype="float32")
    x = torch.cat(idx.shards)
    ds = load_eval_dataset("squad", limit=n_questions)
    emb = load_embedder(resolve_embedder(idx.embedder["name"]), "cpu")
    q = emb.embed_queries([qq.question for qq in ds.questions])
    return x, q, f"SQuAD v1.1 dev: {x.shape[0]} chunk embeddings of {store}, {q.shape[0]} question embeddings"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", help="Use this store's live rows and SQuAD questions (else random unit vectors)")
    ap.add_argument("--questions", type=int, default=2000)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.store:
        x, q, what = _real(args.store, args.questions)
    else:
        g = torch.Generator().manual_seed(0)
        x = torch.nn.functional.normalize(torch.randn(args.rows, args.dim, generator=g), dim=1)
        q = torch.nn.functional.normalize(torch.randn(args.queries, args.dim, generator=g), dim=1)
        what = f"random unit vectors: {args.rows} x {args.dim}, {args.queries} queries"
    dev = args.device
    per = -(-x.shape[0] // args.shards)
    parts = [x[i : i + per] for i in range(0, x.shape[0], per)]
    qd = q.to(dev)
    k = args.k

    rows_out: list[tuple[str, float, float, float, str]] = []  # name, bytes, q/s, recall, note
    exact_idx = _packed(parts, dev, "float32")
    exact, t_exact = _timed(lambda: exact_idx.search(qd, k), args.repeats, dev)
    rows_out.append(("ragbatch float32 (exact)", x.numel() * 4, q.shape[0] / t_exact, 1.0, ""))
    for name in ("float16", "bfloat16", "int8"):
        idx = _packed(parts, dev, name)
        nbytes = x.numel() + x.shape[0] * 4 if name == "int8" else x.numel() * 2
        hits, t = _timed(lambda idx=idx: idx.search(qd, k), args.repeats, dev)
        rows_out.append((f"ragbatch {name}", nbytes, q.shape[0] / t, _recall(hits.rows.cpu(), exact.rows.cpu()), ""))
    t0 = time.perf_counter()
    hnsw = HNSWIndex(parts, x.shape[1])
    build = time.perf_counter() - t0
    (r_h, _), t = _timed(lambda: hnsw.search(q, k), args.repeats, "cpu")
    rows_out.append(("ragbatch ann (FAISS HNSW M=32, efSearch=128)", float("nan"), q.shape[0] / t,
                     _recall(r_h, exact.rows.cpu()), f"build {build:.1f}s"))
    try:
        import faiss

        xf, qf = x.float().numpy(), q.float().numpy()
        flat = faiss.IndexFlatIP(x.shape[1])
        flat.add(xf)
        (_, i_f), t = _timed(lambda: flat.search(qf, k), args.repeats, "cpu")
        rows_out.append(("FAISS IndexFlatIP (peer, exact)", x.numel() * 4, q.shape[0] / t,
                         _recall(torch.from_numpy(i_f), exact.rows.cpu()), ""))
        sq = faiss.IndexScalarQuantizer(x.shape[1], faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        sq.train(xf)
        sq.add(xf)
        (_, i_s), t = _timed(lambda: sq.search(qf, k), args.repeats, "cpu")
        rows_out.append(("FAISS IndexScalarQuantizer 8-bit (peer, int8)", x.numel(), q.shape[0] / t,
                         _recall(torch.from_numpy(i_s), exact.rows.cpu()), ""))
    except ImportError:
        print("faiss-cpu not installed: peers skipped")

    print(f"{what}; k = {k}; device {dev}; torch {torch.__version__} ({torch.get_num_threads()} threads); "
          f"{platform.processor() or platform.machine()}, nproc {os.cpu_count()}; best of {args.repeats}")
    print()
    print("| variant | matrix MiB | queries/s | recall@10 vs exact float32 | note |")
    print("|---|---|---|---|---|")
    for name, nbytes, qps, rec, note in rows_out:
        mib = "–" if nbytes != nbytes else f"{nbytes / 2**20:.1f}"
        print(f"| {name} | {mib} | {qps:,.0f} | {rec:.4f} | {note} |")


if __name__ == "__main__":
    main()
