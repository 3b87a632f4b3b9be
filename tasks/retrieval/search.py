"""Retrieval's public entry: ``search`` (top-k chunks per query) and ``deep_search`` (eval's deep rankings).

The data flow, one module per step:

1. ``loaded_index.py``: the store's committed generation, loaded into matrices (cached per generation);
2. ``backends/``: each ranks those rows behind one protocol (``base.py``): exact dense (``dense.py``), FAISS HNSW
   (``ann.py``), tantivy BM25 (``bm25.py``);
3. ``fusion.py``: rankings combined (RRF);
4. ``retrievers.py``: backends and fusion put together as a :class:`~tasks.config.RetrievalConfig` names them;
5. ``rerank.py``: an optional cross-encoder over the fused candidates; ``cosines.py``: the dense cosine of any hit,
   for the report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import torch

from storage.store import Store, open_store
from tasks.config import RETRIEVERS, RetrievalConfig, with_changes
from tasks.indexing.embed import EmbedderConfig
from tasks.retrieval.backends.base import Hits
from tasks.retrieval.loaded_index import (
    LoadedGeneration,
    clear_index_cache,
    embedder_for_store,
    load_dense_index,
    matrix_dtype_for,
    open_index,
    quantize_int8,
)
from tasks.retrieval.retrievers import RerankedRetriever, Retriever, base_retriever, make_retriever

__all__ = [
    "RETRIEVERS", "Hits", "LoadedGeneration", "Retriever", "SearchResult",
    "chunks_of_documents", "deep_search", "embedder_for_store", "load_dense_index", "make_retriever",
    "matrix_dtype_for", "open_index", "quantize_int8", "search", "clear_index_cache",
]


@dataclass
class SearchResult:
    query: str
    chunk_ids: list[str]
    doc_ids: list[str]
    texts: list[str]
    scores: list[float]
    spans: list[tuple[int, int]] = field(default_factory=list)
    pages: list[tuple[int | None, int | None]] = field(default_factory=list)  # (page_start, page_end) of each hit
    generation: int | None = None  # the store generation searched: the one the hits are evidence from
    page_breaks: list[list[int] | None] = field(default_factory=list)  # each hit's (tasks/ingest/chunk.py)


def search(
    store: str | Store,
    queries: list[str],
    config: RetrievalConfig | None = None,
    *,
    device: str | None = None,
    embedder_config: EmbedderConfig | None = None,
    **changes: Any,
) -> tuple[list[SearchResult], dict[str, float]]:
    """Top-``config.k`` chunks per query from the store (see :class:`tasks.config.RetrievalConfig`), plus timings.

    ``changes`` replace settings of ``config`` (default :class:`RetrievalConfig`), e.g. ``k=3, retriever="bm25"``.
    ``dense``: cosine scores from the store's own embedder (exact). ``ann``: the same by FAISS HNSW.
    ``bm25``: tantivy BM25 scores. ``hybrid``: reciprocal rank fusion of the dense and BM25 lists; its scores
    are RRF scores. ``rerank`` reorders the retriever's top ``rerank_depth`` and returns the reranker's scores.
    ``embedder_config``: the store's embedder already resolved by the caller (not resolved and hashed again).
    """
    config, index, embedder, timings = _open(open_store(store), config, device, embedder_config, changes)
    ranker = make_retriever(index, config, embedder, device)
    hits = ranker.retrieve(queries, config.k)
    timings.update(ranker.timings)
    return _results(index, queries, hits), timings


def deep_search(
    store: str | Store,
    queries: list[str],
    config: RetrievalConfig | None = None,
    *,
    depth: int,
    device: str | None = None,
    embedder_config: EmbedderConfig | None = None,
    **changes: Any,
) -> tuple[list[SearchResult], dict[str, float]]:
    """The ranking to ``depth`` per query (eval's recall curve); with ``config.rerank``, the reranker's order of
    its top ``rerank_depth`` comes first, then the rest of the ranking in its own order.

    The base retriever runs once, and the reranker reorders the head of that same ranking. The scores of the
    reranked head are the reranker's, those after it the retriever's (two scales; eval reads only the order).
    """
    config, index, embedder, timings = _open(open_store(store), config, device, embedder_config, changes)
    base = base_retriever(index, replace(config, rerank=None), embedder, device)
    hits = base.retrieve(queries, depth)
    timings.update(base.timings)
    if config.rerank:
        reranker = RerankedRetriever(index, base, config.rerank, device, config.rerank_depth)
        hits = _head_first(reranker.rerank(queries, hits, config.rerank_depth), hits)
        timings.update(reranker.timings)
    return _results(index, queries, hits), timings


def _open(store: Store, config: RetrievalConfig | None, device: str | None,
          embedder_config: EmbedderConfig | None, changes: dict[str, Any],
          ) -> tuple[RetrievalConfig, LoadedGeneration, EmbedderConfig, dict[str, float]]:
    config = with_changes(config or RetrievalConfig(), **changes)
    t0 = time.perf_counter()
    embedder = embedder_config or embedder_for_store(store, config.embedder)
    index = open_index(store, device, config.matrix_dtype)
    return config, index, embedder, {"load_s": time.perf_counter() - t0}


def _head_first(head: Hits, ranking: Hits) -> Hits:
    """``head``'s rows, then ``ranking``'s rows not among them, cut to ``ranking``'s width."""
    width = ranking.rows.shape[1]
    rows = torch.full((ranking.rows.shape[0], width), -1, dtype=torch.long)
    scores = torch.full(rows.shape, float("-inf"))
    for qi, (h_rows, h_scores, r_rows, r_scores) in enumerate(zip(
            head.rows.tolist(), head.scores.tolist(), ranking.rows.tolist(), ranking.scores.tolist(), strict=True)):
        top = [(r, s) for r, s in zip(h_rows, h_scores, strict=True) if r >= 0]
        seen = {r for r, _ in top}
        merged = (top + [(r, s) for r, s in zip(r_rows, r_scores, strict=True) if r >= 0 and r not in seen])[:width]
        if merged:
            rows[qi, : len(merged)] = torch.tensor([r for r, _ in merged], dtype=torch.long)
            scores[qi, : len(merged)] = torch.tensor([s for _, s in merged])
    return Hits(rows, scores)


def _results(index: LoadedGeneration, queries: list[str], hits: Hits) -> list[SearchResult]:
    ids, docs, texts = index.chunks["chunk_id"], index.chunks["doc_id"], index.chunks["text"]
    starts, ends = index.chunks["char_start"], index.chunks["char_end"]
    p0, p1, breaks = index.chunks["page_start"], index.chunks["page_end"], index.chunks["page_breaks"]
    results = []
    for qi, query in enumerate(queries):
        keep = [(r, s) for r, s in zip(hits.rows[qi].tolist(), hits.scores[qi].tolist(), strict=True) if r >= 0]
        rows = pa.array([r for r, _ in keep], type=pa.int64())
        results.append(
            SearchResult(
                query=query,
                chunk_ids=pc.take(ids, rows).to_pylist(),
                doc_ids=pc.take(docs, rows).to_pylist(),
                texts=pc.take(texts, rows).to_pylist(),
                scores=[round(float(s), 6) for _, s in keep],
                spans=list(zip(pc.take(starts, rows).to_pylist(), pc.take(ends, rows).to_pylist(), strict=True)),
                pages=list(zip(pc.take(p0, rows).to_pylist(), pc.take(p1, rows).to_pylist(), strict=True)),
                generation=index.generation,
                page_breaks=pc.take(breaks, rows).to_pylist(),
            )
        )
    return results


def chunks_of_documents(store: str | Store, doc_ids: set[str], device: str | None = None,
                        matrix_dtype: str | None = None) -> list[dict]:
    """All live chunks of the given documents (id, doc, span, text), for evaluation."""
    index = open_index(store, device, matrix_dtype)
    mask = pc.is_in(index.chunks["doc_id"], value_set=pa.array(sorted(doc_ids), type=pa.string()))
    return index.chunks.filter(mask).select(["chunk_id", "doc_id", "char_start", "char_end", "text"]).to_pylist()
