"""Compaction: shards with tombstoned rows rewritten into shards of live rows only (see :meth:`Store.compact`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

import pyarrow as pa
import torch

from storage.store.meta import CompactReport, IndexMeta, ShardInfo, ShardWrite, StoreError, live_keys, live_mask
from storage.store.schema import ManifestRow, shard_rel

if TYPE_CHECKING:
    from storage.store.base import Store


def compact_store(store: Store, min_dead_ratio: float, shard_rows: int) -> CompactReport:
    """:meth:`Store.compact` once the writer lock is held: plan (which shards), copy (their live rows into new
    shards of at most ``shard_rows``, documents whole), commit (the old shards dropped in the same step)."""
    t0 = time.perf_counter()
    meta = store.meta()
    manifest = store.manifest(meta)
    rep = CompactReport(store=str(store.root), generation=meta.generation, shards_before=len(meta.shards),
                        shards_after=len(meta.shards), dead_ratio_before=meta.dead_ratio,
                        dead_ratio_after=meta.dead_ratio)
    selected = plan_compaction(meta, manifest, min_dead_ratio)
    if not selected:
        rep.seconds = time.perf_counter() - t0
        return rep
    keys = live_keys(manifest)
    by_doc = {r["doc_id"]: ManifestRow.from_record(r) for r in manifest.to_pylist()}
    packer = _Packer(store, by_doc, shard_rows)
    for info in selected:  # one old shard in memory at a time, plus the new one being filled
        for doc_id, emb, chunks in _live_documents(store, info, keys, by_doc, rep):
            packer.add(doc_id, emb, chunks)
    writes = packer.finish()
    names = {s.name for s in selected}
    # Documents pointing at a compacted shard with no rows there (n_chunks 0) follow it to the new shard.
    empty_docs = [d for d, r in by_doc.items() if r.shard in names and d not in packer.moved]
    if empty_docs and writes:
        writes[0].manifest_rows += [replace(by_doc[d], shard=writes[0].info.name) for d in empty_docs]
    sizes = sum(store.size(rel) for s in selected for rel in shard_rel(s.name))
    new = store.commit(meta.embedder, meta.dim, writes, drop_shards=names, rebuild_bm25=True)
    rep.rows_copied = packer.rows_copied
    rep.bytes_freed = sizes - sum(store.size(rel) for w in writes for rel in shard_rel(w.info.name))
    rep.compacted = [s.name for s in selected]
    rep.written = [w.info.name for w in writes]
    rep.generation, rep.shards_after, rep.dead_ratio_after = new.generation, len(new.shards), new.dead_ratio
    rep.seconds = time.perf_counter() - t0
    return rep


def plan_compaction(meta: IndexMeta, manifest: pa.Table, min_dead_ratio: float) -> list[ShardInfo]:
    """The shards whose share of dead rows exceeds ``min_dead_ratio``, in the index's order."""
    live_per_shard: dict[str, int] = {}
    for shard, n in zip(manifest["shard"].to_pylist(), manifest["n_chunks"].to_pylist(), strict=True):
        live_per_shard[shard] = live_per_shard.get(shard, 0) + int(n)
    return [s for s in meta.shards if s.rows and (s.rows - live_per_shard.get(s.name, 0)) / s.rows > min_dead_ratio]


def _live_documents(store: Store, info: ShardInfo, keys: set, by_doc: dict[str, ManifestRow],
                    rep: CompactReport) -> Iterator[tuple[str, torch.Tensor, pa.Table]]:
    """One shard's live rows, a document at a time (its rows together, in row order); its checksums checked."""
    emb, chunks = store.read_shard(info, check_sha=True)
    live = [i for i, m in enumerate(live_mask(chunks, info.name, keys)) if m]
    rep.dead_rows_dropped += info.rows - len(live)
    if not live:
        return
    rows_of: dict[str, list[int]] = {}  # doc id -> its live rows, in row order
    for i, d in zip(live, chunks.take(pa.array(live))["doc_id"].to_pylist(), strict=True):
        rows_of.setdefault(d, []).append(i)
    order = [i for rows in rows_of.values() for i in rows]
    emb_live, chunks_live = emb[torch.tensor(order)], chunks.take(pa.array(order))
    at = 0
    for doc_id, rows in rows_of.items():
        n = len(rows)
        if n != by_doc[doc_id].n_chunks:
            raise StoreError(
                f"{store.loc(shard_rel(info.name)[1])}: document {doc_id!r} has {n} live rows but "
                f"n_chunks {by_doc[doc_id].n_chunks} in the manifest; run `ragbatch verify --store {store.root}`"
            )
        yield doc_id, emb_live[at : at + n], chunks_live.slice(at, n)
        at += n


class _Packer:
    """Fills new shards of at most ``shard_rows`` rows with whole documents, writing each when it is full."""

    def __init__(self, store: Store, by_doc: dict[str, ManifestRow], shard_rows: int) -> None:
        self.store, self.by_doc, self.shard_rows = store, by_doc, shard_rows
        self.pending: list[tuple[torch.Tensor, pa.Table, str]] = []
        self.pending_rows = self.rows_copied = 0
        self.writes: list[ShardWrite] = []
        self.moved: set[str] = set()

    def add(self, doc_id: str, emb: torch.Tensor, chunks: pa.Table) -> None:
        if self.pending and self.pending_rows + len(emb) > self.shard_rows:
            self._flush()
        self.pending.append((emb, chunks, doc_id))
        self.pending_rows += len(emb)
        self.moved.add(doc_id)

    def finish(self) -> list[ShardWrite]:
        self._flush()
        return self.writes

    def _flush(self) -> None:
        if self.pending:
            emb = torch.cat([e for e, _, _ in self.pending])
            chunks = pa.concat_tables([t for _, t, _ in self.pending])
            self.writes.append(self.store.write_shard(emb, chunks, [self.by_doc[d] for _, _, d in self.pending]))
            self.rows_copied += int(emb.shape[0])
        self.pending, self.pending_rows = [], 0
