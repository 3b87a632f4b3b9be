"""Compaction: shards with tombstoned rows rewritten into shards of live rows only (see :meth:`Store.compact`)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

import pyarrow as pa
import torch

from storage.meta import CompactReport, ShardWrite, StoreError, live_keys, live_mask
from storage.schema import ManifestRow
from storage.verify import shard_rel

if TYPE_CHECKING:
    from storage.store import Store


def compact_store(store: Store, min_dead_ratio: float, shard_rows: int) -> CompactReport:
    """:meth:`Store.compact` once the writer lock is held."""
    t0 = time.perf_counter()
    meta = store.meta()
    manifest = store.manifest(meta)
    rep = CompactReport(store=str(store.root), generation=meta.generation, shards_before=len(meta.shards),
                        shards_after=len(meta.shards), dead_ratio_before=meta.dead_ratio,
                        dead_ratio_after=meta.dead_ratio)
    live_per_shard: dict[str, int] = {}
    for shard, n in zip(manifest["shard"].to_pylist(), manifest["n_chunks"].to_pylist(), strict=True):
        live_per_shard[shard] = live_per_shard.get(shard, 0) + int(n)
    selected = [
        s for s in meta.shards if s.rows and (s.rows - live_per_shard.get(s.name, 0)) / s.rows > min_dead_ratio
    ]
    if not selected:
        rep.seconds = time.perf_counter() - t0
        return rep
    keys = live_keys(manifest)
    by_doc = {r["doc_id"]: ManifestRow.from_record(r) for r in manifest.to_pylist()}
    names = {s.name for s in selected}
    writes: list[ShardWrite] = []
    # Live rows waiting for the next new shard: (embeddings, chunk rows, doc id) per document. Shards are
    # read one at a time, so memory holds about one old shard plus one new one.
    pending: list[tuple[torch.Tensor, pa.Table, str]] = []
    pending_rows = 0

    def flush() -> None:
        nonlocal pending, pending_rows
        if pending:
            emb = torch.cat([e for e, _, _ in pending])
            chunks = pa.concat_tables([t for _, t, _ in pending])
            writes.append(store.write_shard(emb, chunks, [by_doc[d] for _, _, d in pending]))
            rep.rows_copied += int(emb.shape[0])
        pending, pending_rows = [], 0

    moved: set[str] = set()
    for info in selected:
        emb, chunks = store.read_shard(info, check_sha=True)
        live = [i for i, m in enumerate(live_mask(chunks, info.name, keys)) if m]
        rep.dead_rows_dropped += info.rows - len(live)
        if not live:
            continue
        rows_of: dict[str, list[int]] = {}  # doc id -> its live rows, in row order
        for i, d in zip(live, chunks.take(pa.array(live))["doc_id"].to_pylist(), strict=True):
            rows_of.setdefault(d, []).append(i)
        order = [i for rows in rows_of.values() for i in rows]  # each document's rows together
        emb_live, chunks_live = emb[torch.tensor(order)], chunks.take(pa.array(order))
        at = 0
        for doc_id, rows in rows_of.items():
            n = len(rows)
            if n != by_doc[doc_id].n_chunks:
                raise StoreError(
                    f"{store.loc(shard_rel(info.name)[1])}: document {doc_id!r} has {n} live rows but "
                    f"n_chunks {by_doc[doc_id].n_chunks} in the manifest; run `ragbatch verify --store "
                    f"{store.root}`"
                )
            if pending and pending_rows + n > shard_rows:
                flush()
            pending.append((emb_live[at : at + n], chunks_live.slice(at, n), doc_id))
            pending_rows += n
            at += n
            moved.add(doc_id)
    flush()
    # Documents pointing at a compacted shard with no rows there (n_chunks 0) follow it to the new shard.
    empty_docs = [d for d, r in by_doc.items() if r.shard in names and d not in moved]
    if empty_docs and writes:
        writes[0].manifest_rows += [replace(by_doc[d], shard=writes[0].info.name) for d in empty_docs]
    sizes = sum(store.size(rel) for s in selected for rel in shard_rel(s.name))
    new = store.commit(meta.embedder, meta.dim, writes, drop_shards=names, rebuild_bm25=True)
    rep.bytes_freed = sizes - sum(store.size(rel) for w in writes for rel in shard_rel(w.info.name))
    rep.compacted = [s.name for s in selected]
    rep.written = [w.info.name for w in writes]
    rep.generation, rep.shards_after, rep.dead_ratio_after = new.generation, len(new.shards), new.dead_ratio
    rep.seconds = time.perf_counter() - t0
    return rep

