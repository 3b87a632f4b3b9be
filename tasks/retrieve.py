"""Exact dense retrieval: the live, normalized chunk rows on the device, one matmul + topk per shard.

Each shard is searched on its own and the per-shard top-k lists are merged exactly, so an index may be
larger than one tensor. Ties are broken by global row order, so results are deterministic.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import torch

from storage.store import Store, StoreError
from tasks.embed import EmbedderConfig, default_device, load_embedder, resolve_embedder


class Hits(NamedTuple):
    """Top-k results for a batch of queries: ``rows`` index into :attr:`DenseIndex.chunks`."""

    rows: torch.Tensor  # [n_queries, k] int64
    scores: torch.Tensor  # [n_queries, k] float32, descending


RETRIEVERS = ("dense", "bm25", "hybrid")


@dataclass
class DenseIndex:
    store: Store
    generation: int
    embedder: dict
    shards: list[torch.Tensor]  # live rows only, on the device
    offsets: list[int]  # global row offset of each shard
    chunks: pa.Table  # live chunk rows, in global row order
    _bm25: object = None

    @property
    def bm25(self):
        """The BM25 index over the same live rows: the store's on-disk one at this generation, opened on first use."""
        if self._bm25 is None:
            from tasks.bm25 import open_bm25

            self._bm25 = open_bm25(str(self.store.root), self.generation, self.chunks)
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
            for shard, off in zip(self.shards, self.offsets, strict=True):
                qd = q.to(shard.device, shard.dtype)
                s = qd @ shard.T
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


def load_dense_index(store: Store, device: str | None = None, check_sha: bool = False) -> DenseIndex:
    """Read the committed generation: only rows whose document's manifest entry points at them."""
    meta = store.meta()
    device = device or default_device()
    manifest = store.manifest(meta)
    live = {(d, s, h) for d, s, h in zip(
        manifest["doc_id"].to_pylist(), manifest["shard"].to_pylist(), manifest["sha256"].to_pylist(), strict=True
    )}
    shards, offsets, tables = [], [], []
    off = 0
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    for info in meta.shards:
        emb, chunks = store.read_shard(info, check_sha=check_sha)
        keep = [
            (d, info.name, h) in live
            for d, h in zip(chunks["doc_id"].to_pylist(), chunks["doc_sha256"].to_pylist(), strict=True)
        ]
        if not any(keep):
            continue
        mask = torch.tensor(keep)
        shards.append(emb[mask].to(device, dtype))
        tables.append(chunks.filter(pa.array(keep)))
        offsets.append(off)
        off += int(mask.sum())
    if off != meta.live_rows:
        raise StoreError(
            f"store {store.root}: {off} live chunk rows found but the metadata says {meta.live_rows}; "
            "run `ragbatch verify`"
        )
    chunks = pa.concat_tables(tables) if tables else store_empty_chunks()
    return DenseIndex(store, meta.generation, meta.embedder, shards, offsets, chunks)


def store_empty_chunks() -> pa.Table:
    from storage.store import CHUNK_SCHEMA

    return CHUNK_SCHEMA.empty_table()


_INDEX_CACHE: dict[tuple[str, str], DenseIndex] = {}


def open_index(store_path: str, device: str | None = None) -> DenseIndex:
    """A process-level cache of loaded indexes, refreshed when the store's generation changes.

    Each generation is loaded once with every shard file's sha256 checked against ``index.json``, so a
    flipped byte or a truncated file is refused with a :class:`StoreError` naming it instead of serving
    garbage. Files are read once and parsed from memory, so the check costs only the hashing (~1.5 GB/s here:
    0.7 ms for the 1.1 MB demo store, whose load takes 5–60 ms). If a writer commits a newer
    generation (and deletes the shards it replaced) while one loads, the load is retried on the new one.
    """
    store = Store(store_path)
    device = device or default_device()
    key = (str(store.root), device)
    gen = store.meta().generation
    cached = _INDEX_CACHE.get(key)
    if cached is None or cached.generation != gen:
        for attempt in range(3):
            try:
                _INDEX_CACHE[key] = load_dense_index(store, device, check_sha=True)
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


def search(
    store_path: str,
    queries: list[str],
    k: int = 5,
    embedder: str | None = None,
    device: str | None = None,
    retriever: str = "dense",
    rrf_k: int = 60,
    fusion_depth: int = 100,
    rerank: str | None = None,
    rerank_depth: int = 20,
) -> tuple[list[SearchResult], dict[str, float]]:
    """Top-k chunks per query from the store, plus timings.

    ``dense``: cosine scores from the store's own embedder. ``bm25``: tantivy BM25 scores. ``hybrid``:
    reciprocal rank fusion (``rrf_k``) of the dense and BM25 top-``fusion_depth`` lists; its scores are
    RRF scores, not cosines. ``rerank`` (``llm:<generator>`` or ``cross-encoder:<model>``) reorders the
    retriever's top ``rerank_depth`` and returns the reranker's scores.
    """
    if retriever not in RETRIEVERS:
        raise ValueError(f"unknown retriever {retriever!r}; choose one of {', '.join(RETRIEVERS)}")
    t0 = time.perf_counter()
    config = embedder_for_store(store_path, embedder)
    index = open_index(store_path, device)
    timings: dict[str, float] = {"load_s": time.perf_counter() - t0}
    final_k, k = k, (max(k, rerank_depth) if rerank and rerank != "none" else k)
    rankings = []
    if retriever in ("dense", "hybrid"):
        t = time.perf_counter()
        q = load_embedder(config, device).embed_queries(queries)
        timings["embed_s"] = time.perf_counter() - t
        t = time.perf_counter()
        dense = index.search(q, k if retriever == "dense" else max(k, fusion_depth))
        timings["dense_s"] = time.perf_counter() - t
        rankings.append(dense)
    if retriever in ("bm25", "hybrid"):
        t = time.perf_counter()
        bm = index.bm25
        timings["bm25_build_s"] = time.perf_counter() - t
        t = time.perf_counter()
        rankings.append(Hits(*bm.search(queries, k if retriever == "bm25" else max(k, fusion_depth))))
        timings["bm25_s"] = time.perf_counter() - t
    if retriever == "hybrid":
        from tasks.bm25 import rrf_fuse

        hits = Hits(*rrf_fuse([rankings[0].rows, rankings[1].rows], min(k, index.rows), rrf_k=rrf_k))
    else:
        hits = rankings[0]
    k = final_k
    if rerank and rerank != "none":
        from tasks.rerank import load_reranker
        from tasks.rerank import rerank as do_rerank

        t = time.perf_counter()
        reranker = load_reranker(rerank, device)
        all_texts = index.chunks["text"]
        cand_rows = [[r for r in row if r >= 0][:rerank_depth] for row in hits.rows.tolist()]
        new_rows = torch.full((len(queries), min(k, index.rows)), -1, dtype=torch.long)
        new_scores = torch.full(new_rows.shape, float("-inf"))
        for qi, cands in enumerate(cand_rows):
            texts_q = pc.take(all_texts, pa.array(cands, type=pa.int64())).to_pylist()
            rows_q, scores_q = do_rerank(reranker, queries[qi], cands, texts_q, new_rows.shape[1])
            new_rows[qi, : len(rows_q)] = torch.tensor(rows_q, dtype=torch.long)
            new_scores[qi, : len(scores_q)] = torch.tensor(scores_q)
        hits = Hits(new_rows, new_scores)
        timings["rerank_s"] = time.perf_counter() - t
    ids, docs, texts = index.chunks["chunk_id"], index.chunks["doc_id"], index.chunks["text"]
    starts, ends = index.chunks["char_start"], index.chunks["char_end"]
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
            )
        )
    return results, timings


def chunks_of_documents(store_path: str, doc_ids: set[str], device: str | None = None) -> list[dict]:
    """All live chunks of the given documents (id, doc, span, text), for evaluation."""
    index = open_index(store_path, device)
    mask = pc.is_in(index.chunks["doc_id"], value_set=pa.array(sorted(doc_ids), type=pa.string()))
    return index.chunks.filter(mask).select(["chunk_id", "doc_id", "char_start", "char_end", "text"]).to_pylist()

