"""The approximate dense backend: FAISS HNSW (``--retriever ann``), for one big machine.

Exact search (tasks/retrieval/backends/dense.py) reads every row per query; HNSW reads a few thousand. It is built
in memory
from the same live, normalized rows the exact index loaded (inner product = cosine), once per loaded
generation, so it never disagrees with the store about which chunks are live. How much it loses is measured,
not assumed: ``ragbatch eval --retriever ann`` reports its recall@10 against exact search on the same queries.
faiss-cpu is an optional dependency (``pip install 'ragbatch[ann]'``).
"""

from __future__ import annotations

import time

import torch

from tasks.retrieval.backends.base import Hits, QueryKind, empty_hits

HNSW_M = 32  # graph degree: memory and build time grow with it, so does recall
EF_CONSTRUCTION = 200
EF_SEARCH = 128  # candidates per query at search time: the recall/speed knob


class HNSWIndex:
    """FAISS ``IndexHNSWFlat`` (inner product) over the rows, in row order."""

    query_kind: QueryKind = "vector"

    def __init__(self, shards: list[torch.Tensor], dim: int, m: int = HNSW_M, ef_construction: int = EF_CONSTRUCTION,
                 ef_search: int = EF_SEARCH):
        try:
            import faiss
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError("--retriever ann needs faiss-cpu: pip install 'ragbatch[ann]'") from exc
        t0 = time.perf_counter()
        self.index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = ef_construction
        self.index.hnsw.efSearch = ef_search
        for shard in shards:
            self.index.add(shard.float().cpu().contiguous().numpy())
        self.rows = self.index.ntotal
        self.build_s = time.perf_counter() - t0

    def search(self, queries: torch.Tensor, k: int) -> Hits:
        """Top-k rows and inner products, descending; -1 / -inf where HNSW found fewer than k."""
        k = min(k, self.rows)
        if k == 0 or queries.shape[0] == 0:
            return empty_hits(queries.shape[0])
        scores, rows = self.index.search(queries.float().cpu().contiguous().numpy(), k)
        rows_t, scores_t = torch.from_numpy(rows).long(), torch.from_numpy(scores).float()
        scores_t[rows_t < 0] = float("-inf")
        return Hits(rows_t, scores_t)
