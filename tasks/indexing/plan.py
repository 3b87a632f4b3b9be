"""The steps of (incremental) indexing: diff against the manifest, chunk + embed a batch, commit.

The manifest, not Prefect's task cache, decides what is re-done: a document is re-embedded when its
content hash, the embedder fingerprint or the chunk settings differ from what the manifest recorded.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from storage.store import CompactReport, IndexMeta, Store
from storage.store.meta import ShardWrite
from storage.store.schema import CHUNK_SCHEMA, ManifestRow
from tasks.indexing.embed import EmbedderConfig, load_embedder
from tasks.ingest.chunk import ChunkSettings, chunk_document
from tasks.ingest.load import Document


@dataclass
class IndexPlan:
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept_unreadable: list[str] = field(default_factory=list)
    rebuild_reason: str | None = None  # set when the embedder changed: everything is re-embedded
    repaired: list[str] = field(default_factory=list)  # unchanged documents re-embedded: their shard was damaged

    @property
    def to_embed(self) -> list[str]:
        return self.added + self.changed

    def summary(self) -> dict[str, int]:
        return {
            "added": len(self.added),
            "changed": len(self.changed),
            "unchanged": len(self.unchanged),
            "removed": len(self.removed),
        }


def plan_index(
    store: Store,
    documents: list[Document],
    embedder: EmbedderConfig,
    settings: ChunkSettings,
    unreadable_paths: set[str] = frozenset(),
    damaged_shards: set[str] = frozenset(),
) -> IndexPlan:
    """Diff the documents on disk against the committed manifest.

    Documents of a file that could not be read this time are kept as they are (never silently dropped).
    Unchanged documents whose rows sit in one of ``damaged_shards`` (``index --repair``: missing or corrupt
    shards found by verify) are re-embedded as if changed, and listed in ``repaired``.
    """
    plan = IndexPlan()
    old: dict[str, dict[str, Any]] = {}
    if store.exists():
        meta = store.meta()
        old = {r["doc_id"]: r for r in store.manifest(meta).to_pylist()}
        if meta.embedder.get("id") != embedder.fingerprint["id"]:
            plan.rebuild_reason = (
                f"embedder changed from {meta.embedder.get('name')!r} ({meta.embedder.get('id', '')[:12]}) "
                f"to {embedder.name!r} ({embedder.fingerprint['id'][:12]}): re-embedding every document"
            )
    fid = embedder.fingerprint["id"]
    current = {d.doc_id: d for d in documents}
    for doc_id, doc in current.items():
        prev = old.get(doc_id)
        if prev is None:
            plan.added.append(doc_id)
        elif (
            plan.rebuild_reason
            or prev["sha256"] != doc.sha256
            or prev["embedder"] != fid
            or prev["chunking"] != settings.key
        ):
            plan.changed.append(doc_id)
        elif prev["shard"] in damaged_shards and int(prev["n_chunks"]):
            plan.changed.append(doc_id)
            plan.repaired.append(doc_id)
        else:
            plan.unchanged.append(doc_id)
    for doc_id, prev in old.items():
        if doc_id in current:
            continue
        if prev["path"] in unreadable_paths:
            plan.kept_unreadable.append(doc_id)
        else:
            plan.removed.append(doc_id)
    return plan


class MassRemovalError(RuntimeError):
    """A run that would remove too much of the index (a wrong, empty or unmounted docs folder): nothing written."""


def removal_refusal(
    plan: IndexPlan, docs_dir: str, store: object, max_ratio: float = 0.5, allow: bool = False
) -> str | None:
    """Why this plan must not run (``None`` when it may), like rsync's ``--max-delete``.

    A run that would leave an index with documents empty is always refused: an empty or unmounted folder
    looks exactly like one whose documents were all deleted. One that removes more than ``max_ratio`` of
    the indexed documents needs ``allow``.
    """
    indexed = len(plan.changed) + len(plan.unchanged) + len(plan.removed) + len(plan.kept_unreadable)
    if not plan.removed or not indexed:
        return None
    n, share = len(plan.removed), len(plan.removed) / indexed
    what = f"indexing {docs_dir} would remove {n} of the {indexed} documents indexed in {store} ({share:.0%})"
    if n == indexed and not plan.added:
        return (f"{what} and leave it empty: is that the right folder, and is it mounted? A run never empties an "
                "index; delete the store folder to start over")
    if share > max_ratio and not allow:
        return (f"{what}, more than the limit of {max_ratio:.0%} (--max-removal-ratio): is that the right folder? "
                "Nothing was changed; pass --allow-mass-removal if the removal is intended")
    return None


@dataclass
class BatchResult:
    shard: ShardWrite
    documents: int
    chunks: int
    tokens: int
    seconds: float
    embed_per_s: float


LARGE_DOCUMENT_CHARS = 10_000_000  # warn above this: such a document is one long batch (~3 min per MB on 2 cores)


def document_batches(documents: list[Document], batch_docs: int, batch_chars: int) -> list[list[Document]]:
    """Consecutive batches of at most ``batch_docs`` documents and ``batch_chars`` characters.

    A document larger than ``batch_chars`` gets a batch (shard, commit) of its own, so the small files
    around it are committed first and a kill during its long embedding loses only it.
    """
    batches: list[list[Document]] = []
    cur: list[Document] = []
    chars = 0
    for doc in documents:
        if cur and (len(cur) >= batch_docs or chars + len(doc.text) > batch_chars):
            batches.append(cur)
            cur, chars = [], 0
        cur.append(doc)
        chars += len(doc.text)
    if cur:
        batches.append(cur)
    return batches


def large_documents(documents: list[Document], limit: int = LARGE_DOCUMENT_CHARS) -> list[str]:
    """Warnings for documents over ``limit`` characters: what they cost, before the run spends it."""
    return [f"{d.path}: {len(d.text) / 1e6:.1f} M characters, embedded as one batch of its own; this takes long "
            f"and nothing of it is committed until it is done" for d in documents if len(d.text) > limit]


def chunk_and_embed(
    store: Store,
    documents: list[Document],
    embedder: EmbedderConfig,
    settings: ChunkSettings,
    device: str | None = None,
    progress: bool = True,
):
    """Chunk a batch of documents, embed the chunks and write one (uncommitted) shard."""
    t0 = time.perf_counter()
    model = load_embedder(embedder, device)
    rows: list[dict[str, Any]] = []
    manifest_rows: list[ManifestRow] = []
    now = time.time()
    for doc in documents:
        chunks = chunk_document(doc, model.tokenizer, settings, embedder.max_length, embedder.passage_prefix)
        rows += [c.__dict__ for c in chunks]
        manifest_rows.append(ManifestRow(
            doc_id=doc.doc_id, path=doc.path, sha256=doc.sha256, size=doc.size, mtime=doc.mtime,
            n_chunks=len(chunks), shard="", embedder=embedder.fingerprint["id"], chunking=settings.key,
            status="indexed", indexed_at=now))
    table = pa.Table.from_pylist(rows, schema=CHUNK_SCHEMA)  # typed: a batch without pages has null columns
    texts = [r["text"] for r in rows]
    emb = model.embed_passages(texts, progress=progress)
    write = store.write_shard(emb, table, manifest_rows)
    return BatchResult(
        shard=write,
        documents=len(documents),
        chunks=len(rows),
        tokens=sum(r["n_tokens"] for r in rows),
        seconds=time.perf_counter() - t0,
        embed_per_s=model.last_stats.get("per_s", 0.0),
    )


def commit_batches(store: Store, plan: IndexPlan, finished: Iterable[BatchResult], batches: int,
                   fingerprint: dict[str, Any], dim: int) -> tuple[IndexMeta | None, list[BatchResult]]:
    """Commit the run's finished batches as they come: the index flow's commit and crash-safety policy.

    - Each batch is its own commit, so a killed run keeps every batch committed before it.
    - Removals go with the last batch (or alone after a run with nothing to embed), never first: a run killed
      midway keeps every document of the generation before it, and the shards holding them.
    - A change of embedder (``plan.rebuild_reason``) is one commit at the very end: vectors must not mix.
    - A new store gets its empty first generation at once (an empty folder is an index too).

    Returns the last committed metadata and the batches taken; fewer than ``batches`` when ``finished`` stopped
    early (a signal), and then an embedder change has committed nothing.
    """
    if plan.rebuild_reason:
        results = list(finished)
        if len(results) < batches:
            return store.meta() if store.exists() else None, results
        return store.commit(fingerprint, dim, [r.shard for r in results], replace_all=True), results
    meta = None if store.exists() else store.commit(fingerprint, dim, [])
    removed = set(plan.removed)
    results = []
    for r in finished:
        results.append(r)
        last = len(results) == batches
        meta = store.commit(fingerprint, dim, [r.shard], remove_doc_ids=removed if last else frozenset())
    if removed and not batches:
        meta = store.commit(fingerprint, dim, [], remove_doc_ids=removed)
    return meta or store.meta(), results


def compaction_due(meta: IndexMeta | None, compact_dead_ratio: float) -> bool:
    """Whether more than ``compact_dead_ratio`` of the store's rows are tombstoned (``≥ 1``: never)."""
    return meta is not None and meta.dead_rows > 0 and meta.dead_ratio > compact_dead_ratio


def compact_if_needed(store: Store, compact_dead_ratio: float) -> CompactReport | None:
    """Compact when :func:`compaction_due` (the caller holds the writer lock); ``None`` when nothing was due.

    Every shard with a dead row is rewritten then, so the store ends with none.
    """
    if not compaction_due(store.meta() if store.exists() else None, compact_dead_ratio):
        return None
    return store.compact(0.0, locked=True)
