"""Retrievers: a ranking over a loaded generation, from one backend, a fusion of two, or a reranked base.

``make_retriever`` builds the one a :class:`~tasks.config.RetrievalConfig` names. Every retriever answers
``retrieve(queries, k) -> Hits`` (rows of ``index.chunks``) for a batch, and adds its seconds per step to
``timings`` for the run's log.
"""

from __future__ import annotations

import sys
import time

import pyarrow as pa
import pyarrow.compute as pc
import torch
from tqdm import tqdm

from tasks.cache import ProcessCache
from tasks.config import RetrievalConfig
from tasks.indexing.embed import EmbedderConfig, load_embedder
from tasks.retrieval.backends.base import Backend, Hits
from tasks.retrieval.fusion import rrf_fuse
from tasks.retrieval.loaded_index import LoadedGeneration


class Retriever:
    """One ranking over a loaded generation: ``retrieve(queries, k) -> Hits``, batched.

    Rows are -1 (score -inf) where fewer than k chunks match; no row appears twice in a query's list.
    """

    name = "base"

    def __init__(self, index: LoadedGeneration):
        self.index = index
        self.timings: dict[str, float] = {}

    def retrieve(self, queries: list[str], k: int) -> Hits:
        raise NotImplementedError

    def _timed(self, key: str, t0: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - t0


class BackendRetriever(Retriever):
    """One backend's ranking; for a vector backend the queries are embedded first, by the store's embedder."""

    open_timing: str | None = None  # the timing key of opening / building the backend, when that takes time

    def __init__(self, index: LoadedGeneration, embedder: EmbedderConfig | None = None, device: str | None = None):
        super().__init__(index)
        self.config, self.device = embedder, device

    def backend(self) -> Backend:
        raise NotImplementedError

    def embed(self, queries: list[str]) -> torch.Tensor:
        if self.config is None:
            raise ValueError(f"the {self.name} retriever needs the store's embedder")
        t = time.perf_counter()
        q = embed_queries(self.config, self.device, queries)
        self._timed("embed_s", t)
        return q

    def retrieve(self, queries: list[str], k: int) -> Hits:
        t = time.perf_counter()
        backend = self.backend()
        if self.open_timing:
            self._timed(self.open_timing, t)
        q = self.embed(queries) if backend.query_kind == "vector" else queries
        t = time.perf_counter()
        hits = Hits(*backend.search(q, k))
        self._timed(f"{self.name}_s", t)
        return hits


class DenseRetriever(BackendRetriever):
    """Exact: every live row scored by a matmul (cosines; tasks/retrieval/backends/dense.py)."""

    name = "dense"

    def backend(self) -> Backend:
        return self.index.dense


class AnnRetriever(BackendRetriever):
    """Approximate: FAISS HNSW over the same rows (tasks/retrieval/backends/ann.py); its loss is measured by
    ``eval``."""

    name = "ann"
    open_timing = "ann_build_s"

    def backend(self) -> Backend:
        return self.index.ann


class BM25Retriever(BackendRetriever):
    """tantivy BM25 over the same live rows (tasks/retrieval/backends/bm25.py)."""

    name = "bm25"
    open_timing = "bm25_open_s"

    def backend(self) -> Backend:
        return self.index.bm25


class HybridRetriever(Retriever):
    """Reciprocal rank fusion of its parts' top-``depth`` lists (a fixed depth, so the top k does not depend on k);
    its scores are RRF scores."""

    name = "hybrid"

    def __init__(self, index: LoadedGeneration, parts: list[Retriever], depth: int = RetrievalConfig.fusion_depth,
                 rrf_k: int = RetrievalConfig.rrf_k, weights: list[float] | None = None):
        super().__init__(index)
        self.parts, self.depth, self.rrf_k, self.weights = parts, depth, rrf_k, weights

    def retrieve(self, queries: list[str], k: int) -> Hits:
        rankings = [p.retrieve(queries, max(k, self.depth)).rows for p in self.parts]
        for p in self.parts:
            self.timings.update(p.timings)
        return Hits(*rrf_fuse(rankings, min(k, self.index.rows), rrf_k=self.rrf_k, weights=self.weights))


class RerankedRetriever(Retriever):
    """The base retriever's top ``depth`` reordered by a reranker (tasks/retrieval/rerank.py); its scores are the
    reranker's."""

    def __init__(self, index: LoadedGeneration, base: Retriever, reranker: str, device: str | None,
                 depth: int = RetrievalConfig.rerank_depth):
        super().__init__(index)
        self.base, self.reranker, self.device, self.depth = base, reranker, device, depth
        self.name = f"{base.name}+{reranker}"

    def retrieve(self, queries: list[str], k: int) -> Hits:
        hits = self.base.retrieve(queries, max(k, self.depth))
        self.timings.update(self.base.timings)
        return self.rerank(queries, hits, k)

    def rerank(self, queries: list[str], hits: Hits, k: int) -> Hits:
        """The top ``depth`` of ``hits`` (a base ranking already retrieved) in the reranker's order, ``k`` kept."""
        from tasks.retrieval.rerank import load_reranker, rerank

        t = time.perf_counter()
        reranker = load_reranker(self.reranker, self.device)
        all_texts = self.index.chunks["text"]
        new_rows = torch.full((len(queries), min(k, self.index.rows)), -1, dtype=torch.long)
        new_scores = torch.full(new_rows.shape, float("-inf"))
        with tqdm(total=len(queries), unit="query", desc=f"rerank {self.reranker}", file=sys.stderr,
                  disable=len(queries) < 2) as bar:
            for qi, row in enumerate(hits.rows.tolist()):
                cands = [r for r in row if r >= 0][: self.depth]
                texts_q = pc.take(all_texts, pa.array(cands, type=pa.int64())).to_pylist()
                rows_q, scores_q = rerank(reranker, queries[qi], cands, texts_q, new_rows.shape[1])
                new_rows[qi, : len(rows_q)] = torch.tensor(rows_q, dtype=torch.long)
                new_scores[qi, : len(scores_q)] = torch.tensor(scores_q)
                bar.update(1)
        self._timed("rerank_s", t)
        return Hits(new_rows, new_scores)


RECENT_BATCHES = 8  # query batches whose embeddings are kept (a few answer batches in flight, each a few KiB)
_RECENT_QUERIES: ProcessCache[torch.Tensor] = ProcessCache(max_items=RECENT_BATCHES)


def embed_queries(config: EmbedderConfig, device: str | None, queries: list[str]) -> torch.Tensor:
    """The queries' embeddings, computed once per batch: a hybrid search and the cosines shown beside its
    scores (tasks/retrieval/cosines.py), or eval's exact and approximate searches, embed the same batch of questions;
    the second caller gets the first one's tensor (read-only by every caller) instead of running the model."""
    key = (config.fingerprint["id"], config.path, device, tuple(queries))
    return _RECENT_QUERIES.get(key, lambda: load_embedder(config, device).embed_queries(queries))


def base_retriever(index: LoadedGeneration, config: RetrievalConfig, embedder: EmbedderConfig,
                   device: str | None = None) -> Retriever:
    """The retriever ``config.retriever`` names (dense, bm25, hybrid, ann), without the reranker."""
    if config.retriever == "dense":
        return DenseRetriever(index, embedder, device)
    if config.retriever == "ann":
        return AnnRetriever(index, embedder, device)
    if config.retriever == "bm25":
        return BM25Retriever(index)
    return HybridRetriever(index, [DenseRetriever(index, embedder, device), BM25Retriever(index)],
                           config.fusion_depth, config.rrf_k, list(config.hybrid_weights))


def make_retriever(index: LoadedGeneration, config: RetrievalConfig, embedder: EmbedderConfig,
                   device: str | None = None) -> Retriever:
    """The retriever ``config.retriever`` names (dense, bm25, hybrid, ann), followed by ``config.rerank`` if set."""
    r = base_retriever(index, config, embedder, device)
    if config.rerank:
        r = RerankedRetriever(index, r, config.rerank, device, config.rerank_depth)
    return r
