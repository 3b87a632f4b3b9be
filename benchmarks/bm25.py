"""Benchmark: BM25 with tantivy (ours) vs bm25s and rank_bm25 on the SQuAD v1.1 dev paragraphs, one run.

    python benchmarks/bm25.py [--queries 2000]

Index time and queries/s for each engine on the same paragraphs and questions, plus paragraph-level
recall@1/10 of each (same k1=1.2, b=0.75; ours with English stemming as used in ragbatch, the peers with
lower-case alphanumeric tokens and no stemmer, their default setting here).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasks.evaluation.datasets import fetch_squad_dev  # noqa: E402
from tasks.retrieval.backends.bm25 import BM25Index  # noqa: E402


def tok(t: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", t.lower())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--rank-bm25-queries", type=int, default=300, help="rank_bm25 scores every document in Python")
    args = ap.parse_args()
    data = json.loads(fetch_squad_dev().read_text())["data"]
    docs, qs, gold = [], [], []
    for art in data:
        for para in art["paragraphs"]:
            for qa in para["qas"]:
                qs.append(qa["question"])
                gold.append(len(docs))
            docs.append(para["context"])
    qs, gold = qs[: args.queries], gold[: args.queries]
    out = {}

    t0 = time.perf_counter()
    ours = BM25Index.from_texts(docs)
    t_idx = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows, _ = ours.search(qs, 10)
    out["ragbatch (tantivy, en_stem)"] = (t_idx, len(qs) / (time.perf_counter() - t0), rows.tolist())

    import bm25s

    t0 = time.perf_counter()
    ref = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
    ref.index([tok(d) for d in docs], show_progress=False)
    t_idx = time.perf_counter() - t0
    t0 = time.perf_counter()
    res, _ = ref.retrieve([tok(q) for q in qs], k=10, show_progress=False)
    out["bm25s (lucene)"] = (t_idx, len(qs) / (time.perf_counter() - t0), res.tolist())

    from rank_bm25 import BM25Okapi

    t0 = time.perf_counter()
    okapi = BM25Okapi([tok(d) for d in docs], k1=1.2, b=0.75)
    t_idx = time.perf_counter() - t0
    n = min(args.rank_bm25_queries, len(qs))
    t0 = time.perf_counter()
    top = [np.argsort(-okapi.get_scores(tok(q)), kind="stable")[:10].tolist() for q in qs[:n]]
    out["rank_bm25 (okapi)"] = (t_idx, n / (time.perf_counter() - t0), top)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {len(docs)} paragraphs, {len(qs)} questions "
          f"(rank_bm25: first {n})")
    base = out["ragbatch (tantivy, en_stem)"][1]
    print(f"{'engine':<30} {'index s':>8} {'queries/s':>10} {'ours/them':>10} {'R@1':>6} {'R@10':>6}")
    for name, (t_idx, qps, ranked) in out.items():
        g = gold[: len(ranked)]
        r1 = sum(r[:1] == [x] for r, x in zip(ranked, g, strict=True)) / len(ranked)
        r10 = sum(x in r[:10] for r, x in zip(ranked, g, strict=True)) / len(ranked)
        print(f"{name:<30} {t_idx:8.2f} {qps:10.0f} {base / qps:10.2f} {r1:6.3f} {r10:6.3f}")


if __name__ == "__main__":
    main()
