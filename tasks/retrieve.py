"""Exact dense retrieval: the live, normalized chunk rows on the device, one matmul + topk per shard.

Each shard is searched on its own and the per-shard top-k lists are merged exactly, so an index may be
larger than one tensor. Ties are broken by global row order, so results are deterministic.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import torch
from tqdm import tqdm

from storage.store import Store, StoreError
from tasks.config import MATRIX_DTYPES, RETRIEVERS, RetrievalConfig, with_changes  # noqa: F401 - RETRIEVERS re-exported
from tasks.device import default_device
from tasks.embed import EmbedderConfig, load_embedder, resolve_embedder


class Hits(NamedTuple):
    """Top-k results for a batch of queries: ``rows`` index into :attr:`DenseIndex.chunks`."""

    rows: torch.Tensor  # [n_queries, k] int64
    scores: torch.Tensor  # [n_queries, k] float32, descending


INT8_BLOCK_ROWS = 65536  # int8 rows are dequantized this many at a time, so the float copy stays small


@dataclass
class DenseIndex:
    store: Store
    generation: int
    embedder: dict
    shards: list[torch.Tensor]  # live rows only, on the device
    offsets: list[int]  # global row offset of each shard
    chunks: pa.Table  # live chunk rows, in global row order
    scales: list[torch.Tensor | None] = field(default_factory=list)  # per-row scales of int8 shards
    _bm25: object = None
    _ann: object = None

    def __post_init__(self) -> None:
        self.scales = self.scales or [None] * len(self.shards)  # None: a float shard

    @property
    def ann(self):
        """A FAISS HNSW index over the same live rows (tasks/ann.py), built on first use."""
        if self._ann is None:
            from tasks.ann import HNSWIndex

            self._ann = HNSWIndex(self.float_shards(), int(self.embedder.get("dim") or self.shards[0].shape[1]))
        return self._ann

    def float_shards(self) -> list[torch.Tensor]:
        """The shards as float32 (int8 rows dequantized)."""
        return [_dequantize(sh, sc) for sh, sc in zip(self.shards, self.scales, strict=True)]

    @property
    def bm25(self):
        """The BM25 index over the same live rows: the store's on-disk one at this generation, opened on first use."""
        if self._bm25 is None:
            from tasks.bm25 import open_bm25

            self._bm25 = open_bm25(self.store.bm25_at(self.generation), self.generation, self.chunks)
        return self._bm25

    @property
    def rows(self) -> int:
        return self.chunks.num_rows

    def search(self, queries: torch.Tensor, k: int, query_batch: int = 1024) -> Hits:
        """Exact top-k by inner product (cosine, rows being unit vectors), merged across shards."""
        k = min(k, self.rows)
        nq = queries.shape[0]
        if k == 0 or nq == 0:
            return Hits(torch.empty(nq, 0, dtype=torch.long), torch.empty(nq, 0))
        out_rows, out_scores = [], []
        for q0 in range(0, nq, query_batch):
            q = queries[q0 : q0 + query_batch]
            cand_s, cand_r = [], []
            for shard, scale, off in zip(self.shards, self.scales, self.offsets, strict=True):
                if scale is None:
                    s = q.to(shard.device, shard.dtype) @ shard.T
                else:  # int8 rows: score = (q · row_int8) × row scale, dequantized block by block
                    qd = q.to(shard.device, torch.float32 if shard.device.type == "cpu" else torch.float16)
                    s = torch.cat([(qd @ shard[b:b + INT8_BLOCK_ROWS].to(qd.dtype).T) * scale[b:b + INT8_BLOCK_ROWS]
                                   for b in range(0, shard.shape[0], INT8_BLOCK_ROWS)], 1)
                kk = min(k, shard.shape[0])
                vals, idx = torch.topk(s, kk, dim=1, sorted=False)
                # topk picks arbitrarily among rows tied at the cut-off; redo those queries with a stable
                # sort so the lowest row wins (rare on real data, but results must not depend on shard layout).
                thr = vals.min(dim=1, keepdim=True).values
                tied = (s == thr).sum(1) > (vals == thr).sum(1)
                for qi in torch.nonzero(tied).flatten().tolist():
                    order = torch.sort(s[qi], descending=True, stable=True)
                    vals[qi], idx[qi] = order.values[:kk], order.indices[:kk]
                cand_s.append(vals.float().cpu())
                cand_r.append(idx.cpu() + off)
            s_all = torch.cat(cand_s, 1)
            r_all = torch.cat(cand_r, 1)
            # Deterministic merge: order by row, then stable sort by score descending.
            by_row = torch.argsort(r_all, dim=1)
            r_all, s_all = r_all.gather(1, by_row), s_all.gather(1, by_row)
            by_score = torch.sort(s_all, dim=1, descending=True, stable=True).indices[:, :k]
            out_rows.append(r_all.gather(1, by_score))
            out_scores.append(s_all.gather(1, by_score))
        return Hits(torch.cat(out_rows), torch.cat(out_scores))


def quantize_int8(emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: row ≈ q × scale, scale = max|row| / 127 (a quarter of float32's memory)."""
    scale = emb.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    return torch.round(emb / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


def _dequantize(shard: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    return shard.float() if scale is None else shard.float() * scale.float()[:, None]


def matrix_dtype_for(device: str, matrix_dtype: str | None) -> str:
    """``auto``: float16 on a GPU (its tensor cores; recall measured in benchmarks/RESULTS.md), else float32."""
    if matrix_dtype in (None, "auto"):
        return "float16" if device.startswith("cuda") else "float32"
    if matrix_dtype not in MATRIX_DTYPES:
        raise ValueError(f"unknown matrix dtype {matrix_dtype!r}; choose one of {', '.join(MATRIX_DTYPES)}")
    return matrix_dtype


def load_dense_index(store: Store, device: str | None = None, check_sha: bool = False,
                     matrix_dtype: str | None = None) -> DenseIndex:
    """Read the committed generation: only rows whose document's manifest entry points at them.

    The stored float32 rows are held on the device as ``matrix_dtype`` (see :func:`matrix_dtype_for`).
    """
    meta = store.meta()
    device = device or default_device()
    manifest = store.manifest(meta)
    live = {(d, s, h) for d, s, h in zip(
        manifest["doc_id"].to_pylist(), manifest["shard"].to_pylist(), manifest["sha256"].to_pylist(), strict=True
    )}
    shards, offsets, tables, scales = [], [], [], []
    off = 0
    mdtype = matrix_dtype_for(device, matrix_dtype)
    for info in meta.shards:
        emb, chunks = store.read_shard(info, check_sha=check_sha)
        keep = [
            (d, info.name, h) in live
            for d, h in zip(chunks["doc_id"].to_pylist(), chunks["doc_sha256"].to_pylist(), strict=True)
        ]
        if not any(keep):
            continue
        mask = torch.tensor(keep)
        if mdtype == "int8":
            q8, sc = quantize_int8(emb[mask].float())
            shards.append(q8.to(device))
            scales.append(sc.to(device, torch.float32 if device == "cpu" else torch.float16))
        else:
            shards.append(emb[mask].to(device, getattr(torch, mdtype)))
            scales.append(None)
        tables.append(chunks.filter(pa.array(keep)))
        offsets.append(off)
        off += int(mask.sum())
    if off != meta.live_rows:
        raise StoreError(
            f"store {store.root}: {off} live chunk rows found but the metadata says {meta.live_rows}; "
            "run `ragbatch verify`"
        )
    chunks = pa.concat_tables(tables) if tables else store_empty_chunks()
    return DenseIndex(store, meta.generation, meta.embedder, shards, offsets, chunks, scales)


def store_empty_chunks() -> pa.Table:
    from storage.store import CHUNK_SCHEMA

    return CHUNK_SCHEMA.empty_table()


_INDEX_CACHE: dict[tuple[str, str, str], DenseIndex] = {}


def open_index(store_path: str, device: str | None = None, matrix_dtype: str | None = None) -> DenseIndex:
    """A process-level cache of loaded indexes, refreshed when the store's generation changes.

    Each generation is loaded once with every shard file's sha256 checked against ``index.json``, so a
    flipped byte or a truncated file is refused with a :class:`StoreError` naming it instead of serving
    garbage. Files are read once and parsed from memory, so the check costs only the hashing (~1.5 GB/s here:
    0.7 ms for the 1.1 MB demo store, whose load takes 5–60 ms). If a writer commits a newer
    generation (and deletes the shards it replaced) while one loads, the load is retried on the new one.
    """
    store = Store(store_path)
    device = device or default_device()
    mdtype = matrix_dtype_for(device, matrix_dtype)
    key = (str(store.root), device, mdtype)
    gen = store.meta().generation
    cached = _INDEX_CACHE.get(key)
    if cached is None or cached.generation != gen:
        for attempt in range(3):
            try:
                _INDEX_CACHE[key] = load_dense_index(store, device, check_sha=True, matrix_dtype=mdtype)
                break
            except StoreError:
                now = store.meta().generation
                if attempt == 2 or now == gen:
                    raise
                gen = now
    return _INDEX_CACHE[key]


def embedder_for_store(store_path: str, embedder: str | None = None) -> EmbedderConfig:
    """The store's own embedder by default; another one is refused with both names in the error."""
    store = Store(store_path)
    built = store.meta().embedder
    config = resolve_embedder(embedder or built["name"])
    store.check_embedder(config.fingerprint)
    return config


@dataclass
class SearchResult:
    query: str
    chunk_ids: list[str]
    doc_ids: list[str]
    texts: list[str]
    scores: list[float]
    spans: list[tuple[int, int]] = field(default_factory=list)
    pages: list[tuple[int | None, int | None]] = field(default_factory=list)  # (page_start, page_end) of each hit


class Retriever:
    """One ranking over a loaded index: ``retrieve(queries, k) -> Hits`` (rows of ``index.chunks``), batched.

    Rows are -1 (score -inf) where fewer than k chunks match; no row appears twice in a query's list.
    ``timings`` accumulates seconds per step for the run's log.
    """

    name = "base"

    def __init__(self, index: DenseIndex):
        self.index = index
        self.timings: dict[str, float] = {}

    def retrieve(self, queries: list[str], k: int) -> Hits:
        raise NotImplementedError

    def _timed(self, key: str, t0: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - t0


class DenseRetriever(Retriever):
    """Exact: every live row scored by one matmul per shard (cosines)."""

    name = "dense"

    def __init__(self, index: DenseIndex, config: EmbedderConfig, device: str | None):
        super().__init__(index)
        self.config, self.device = config, device

    def embed(self, queries: list[str]) -> torch.Tensor:
        t = time.perf_counter()
        q = load_embedder(self.config, self.device).embed_queries(queries)
        self._timed("embed_s", t)
        return q

    def retrieve(self, queries: list[str], k: int) -> Hits:
        q = self.embed(queries)
        t = time.perf_counter()
        hits = self.index.search(q, k)
        self._timed("dense_s", t)
        return hits


class AnnRetriever(DenseRetriever):
    """Approximate: FAISS HNSW over the same rows (tasks/ann.py); its loss is measured by ``eval``."""

    name = "ann"

    def retrieve(self, queries: list[str], k: int) -> Hits:
        q = self.embed(queries)
        t = time.perf_counter()
        ann = self.index.ann
        self._timed("ann_build_s", t)
        t = time.perf_counter()
        hits = Hits(*ann.search(q, k))
        self._timed("ann_s", t)
        return hits


class BM25Retriever(Retriever):
    """tantivy BM25 over the same live rows (tasks/bm25.py)."""

    name = "bm25"

    def retrieve(self, queries: list[str], k: int) -> Hits:
        t = time.perf_counter()
        bm = self.index.bm25
        self._timed("bm25_open_s", t)
        t = time.perf_counter()
        hits = Hits(*bm.search(queries, k))
        self._timed("bm25_s", t)
        return hits


class HybridRetriever(Retriever):
    """Reciprocal rank fusion of its parts' top-``depth`` lists (a fixed depth, so the top k does not depend on k);
    its scores are RRF scores."""

    name = "hybrid"

    def __init__(self, index: DenseIndex, parts: list[Retriever], depth: int = 100, rrf_k: int = 60,
                 weights: list[float] | None = None):
        super().__init__(index)
        self.parts, self.depth, self.rrf_k, self.weights = parts, depth, rrf_k, weights

    def retrieve(self, queries: list[str], k: int) -> Hits:
        from tasks.bm25 import rrf_fuse

        rankings = [p.retrieve(queries, max(k, self.depth)).rows for p in self.parts]
        for p in self.parts:
            self.timings.update(p.timings)
        return Hits(*rrf_fuse(rankings, min(k, self.index.rows), rrf_k=self.rrf_k, weights=self.weights))


class RerankedRetriever(Retriever):
    """The base retriever's top ``depth`` reordered by a reranker (tasks/rerank.py); its scores are the reranker's."""

    def __init__(self, index: DenseIndex, base: Retriever, reranker: str, device: str | None, depth: int = 20):
        super().__init__(index)
        self.base, self.reranker, self.device, self.depth = base, reranker, device, depth
        self.name = f"{base.name}+{reranker}"

    def retrieve(self, queries: list[str], k: int) -> Hits:
        from tasks.rerank import load_reranker, rerank

        hits = self.base.retrieve(queries, max(k, self.depth))
        self.timings.update(self.base.timings)
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


def make_retriever(index: DenseIndex, config: RetrievalConfig, embedder: EmbedderConfig,
                   device: str | None = None) -> Retriever:
    """The retriever ``config.retriever`` names (dense, bm25, hybrid, ann), followed by ``config.rerank`` if set."""
    r: Retriever
    if config.retriever == "dense":
        r = DenseRetriever(index, embedder, device)
    elif config.retriever == "ann":
        r = AnnRetriever(index, embedder, device)
    elif config.retriever == "bm25":
        r = BM25Retriever(index)
    else:
        r = HybridRetriever(index, [DenseRetriever(index, embedder, device), BM25Retriever(index)],
                            config.fusion_depth, config.rrf_k, list(config.hybrid_weights))
    if config.rerank:
        r = RerankedRetriever(index, r, config.rerank, device, config.rerank_depth)
    return r


def search(
    store_path: str,
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
    config = with_changes(config or RetrievalConfig(), **changes)
    t0 = time.perf_counter()
    embedder = embedder_config or embedder_for_store(store_path, config.embedder)
    index = open_index(store_path, device, config.matrix_dtype)
    timings: dict[str, float] = {"load_s": time.perf_counter() - t0}
    ranker = make_retriever(index, config, embedder, device)
    hits = ranker.retrieve(queries, config.k)
    timings.update(ranker.timings)
    ids, docs, texts = index.chunks["chunk_id"], index.chunks["doc_id"], index.chunks["text"]
    starts, ends = index.chunks["char_start"], index.chunks["char_end"]
    p0, p1 = index.chunks["page_start"], index.chunks["page_end"]
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
            )
        )
    return results, timings


def chunks_of_documents(store_path: str, doc_ids: set[str], device: str | None = None,
                        matrix_dtype: str | None = None) -> list[dict]:
    """All live chunks of the given documents (id, doc, span, text), for evaluation."""
    index = open_index(store_path, device, matrix_dtype)
    mask = pc.is_in(index.chunks["doc_id"], value_set=pa.array(sorted(doc_ids), type=pa.string()))
    return index.chunks.filter(mask).select(["chunk_id", "doc_id", "char_start", "char_end", "text"]).to_pylist()

