"""Does the embedder keep its quality in bfloat16? Cosine to float32 and SQuAD-dev recall@10, in one run.

The SQuAD store's live chunks are re-embedded in float32 and in bfloat16 with the same embedder; every
SQuAD-dev question is embedded both ways too. Reported: per-row cosine between the two (passages and
queries), recall@10 of the gold paragraph for fp32 queries on fp32 rows vs bf16 queries on bf16 rows, and
the speed of each. The bar (issue 9): cosine >= 0.999 and recall@10 unchanged; ``tasks/indexing/embed.py``'s
``CPU_BF16_EMBEDDING`` follows the verdict.

    python benchmarks/embed_dtype.py --store STORE [--questions 2000]
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage.paths import configure_environment  # noqa: E402

configure_environment()

from storage.store import open_store  # noqa: E402
from tasks.device import cpu_has_native_bf16  # noqa: E402
from tasks.evaluation.datasets import load_eval_dataset  # noqa: E402
from tasks.indexing.embed import Embedder  # noqa: E402
from tasks.retrieval.search import embedder_for_store, load_dense_index  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True)
    ap.add_argument("--questions", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    config = embedder_for_store(args.store, None)
    index = load_dense_index(open_store(args.store), "cpu")
    texts = index.chunks["text"].to_pylist()
    docs = index.chunks["doc_id"].to_pylist()
    ds = load_eval_dataset("squad")
    qs = random.Random(args.seed).sample(ds.questions, min(args.questions, len(ds.questions)))
    print(f"{platform.processor() or platform.machine()}, native bf16: {cpu_has_native_bf16()}, "
          f"torch threads {torch.get_num_threads()}; {len(texts)} chunks, {len(qs)} questions", flush=True)
    emb, secs = {}, {}
    for dtype in ("float32", "bfloat16"):
        e = Embedder(config, device="cpu", dtype=dtype)
        t0 = time.perf_counter()
        p = e.embed_passages(texts, progress=True)
        secs[dtype] = time.perf_counter() - t0
        q = e.embed_queries([x.question for x in qs])
        emb[dtype] = (p, q)
        print(f"{dtype:9} passages {len(texts) / secs[dtype]:.1f}/s", flush=True)
    (p32, q32), (p16, q16) = emb["float32"], emb["bfloat16"]
    cos_p, cos_q = (p32 * p16).sum(1), (q32 * q16).sum(1)

    def recall(p: torch.Tensor, q: torch.Tensor) -> float:
        top = torch.topk(q @ p.T, 10, dim=1).indices.tolist()
        hits = [bool({docs[i] for i in row} & set(x.evidence_doc_ids)) for row, x in zip(top, qs, strict=True)]
        return sum(hits) / len(qs)

    r32, r16 = recall(p32, q32), recall(p16, q16)
    print("\n| dtype | passages/s | cosine to fp32 (passages: min / mean) | queries: min / mean | recall@10 |")
    print("|---|---|---|---|---|")
    print(f"| float32 | {len(texts) / secs['float32']:.1f} | 1 | 1 | {r32:.4f} |")
    print(f"| bfloat16 | {len(texts) / secs['bfloat16']:.1f} | {cos_p.min():.5f} / {cos_p.mean():.5f} | "
          f"{cos_q.min():.5f} / {cos_q.mean():.5f} | {r16:.4f} |")
    ok = float(cos_p.min()) >= 0.999 and float(cos_q.min()) >= 0.999 and r16 >= r32
    print(f"\nspeed-up {secs['float32'] / secs['bfloat16']:.2f}x; bfloat16 {'holds' if ok else 'does NOT hold'} "
          "the bar (cosine >= 0.999 on every row, recall@10 not lower)")


if __name__ == "__main__":
    main()
