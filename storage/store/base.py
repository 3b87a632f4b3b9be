"""The store's contract: what every backend offers, and the logic they share.

A store holds one index: chunk tables, embedding shards, the manifest and the index metadata. Open one with
:func:`storage.store.open_store`: a local folder (a path or ``file://`` URL) is a
:class:`~storage.store.local.LocalStore`, ``s3://bucket/prefix`` an :class:`~storage.store.s3.S3Store`; both hold
the same files and honour this contract.

Layout of a store::

    index.json                     committed last, atomically: the one source of truth
    manifest-<generation>.parquet  one row per document (id, path, sha256, size, mtime, chunks, shard, ...)
    shards/<shard>.safetensors     float embeddings, one row per chunk, unit L2 norm
    shards/<shard>.chunks.parquet  the chunks of that shard, row-aligned with the tensor
    .lock                          held by the one writer (pid and host inside; a lease object on S3)

The file names are stated once, in storage/store/schema.py (``shard_rel``). Shards are immutable. A chunk row is
*live* when its document's manifest entry points at its shard with the same content hash; rows of removed or
changed documents are tombstoned implicitly and dropped by compaction. A writer that dies before its commit
leaves the previous generation intact; files that no committed generation references are orphans and are
deleted by the next writer.

Everything here reads and writes through a few hooks each backend implements (:meth:`Store.loc`,
:meth:`Store.read_bytes`, :meth:`Store._source`, :meth:`Store._put_once`, :meth:`Store._publish`, ...), so reading
a shard, committing, verifying (storage/store/verify.py) and compacting (storage/store/compact.py) are written once.

Crash tests stop a writer at named points (:func:`storage.hooks.crash_point`; storage/testing.py lists them).
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes

from storage.hooks import crash_point
from storage.store.bm25 import DiskBM25, SyncReport
from storage.store.compact import compact_store
from storage.store.meta import (
    COMPACT_SHARD_ROWS,
    FORMAT_VERSION,
    INDEX_FILE,
    CompactReport,
    EmbedderMismatchError,
    IndexMeta,
    ShardInfo,
    ShardWrite,
    StoreError,
    VerifyReport,
)
from storage.store.schema import (
    MANIFEST_SCHEMA,
    ManifestRow,
    conform_chunks,
    manifest_table,
    read_chunk_table,
    shard_rel,
)
from storage.store.verify import check_once


class Store(ABC):
    """One index, wherever it lives (see the module docstring). Readers need no lock; writers hold :meth:`lock`."""

    root: Path | str  # a folder here, a URL on object storage: for messages and the lock
    bm25_syncs: list[SyncReport]  # what this object's commits did to the BM25 index

    # ---------------------------------------------------------------- the backend's hooks
    @abstractmethod
    def loc(self, rel: str) -> str:
        """Where a file of the store is, for messages: a path, or a URL on object storage."""

    @abstractmethod
    def read_bytes(self, rel: str) -> bytes:
        """A file's bytes (``FileNotFoundError`` when absent)."""

    @abstractmethod
    def _source(self, rel: str) -> Path | bytes:
        """What parsers read: a path (no copy) or the object's bytes (``FileNotFoundError`` when absent)."""

    @abstractmethod
    def size(self, rel: str) -> int:
        """A file's size in bytes (0 when absent)."""

    @abstractmethod
    def exists(self) -> bool:
        """Whether a generation was ever committed here."""

    @abstractmethod
    def _read_index(self) -> bytes:
        """``index.json``'s bytes (``FileNotFoundError`` when there is none). A backend that cannot reach its
        storage raises its own error: that is not a damaged store, and ``verify`` says "could not check"."""

    @abstractmethod
    def manifest_name(self, generation: int) -> str:
        """The name a new generation's manifest is written under."""

    @abstractmethod
    def unreferenced(self, meta: IndexMeta) -> list[str]:
        """Files no committed generation references (orphans the next writer deletes), as :meth:`loc` names them."""

    @abstractmethod
    def bm25_root(self) -> Path:
        """The local folder holding this machine's BM25 index of the store (``bm25/`` under it)."""

    @abstractmethod
    def _put_once(self, rel: str, data: bytes) -> None:
        """Write a new file of the store, atomically and never over an existing one."""

    @abstractmethod
    def _publish(self, old: IndexMeta | None, meta: IndexMeta, manifest: pa.Table) -> None:
        """Write ``manifest``, then make ``meta`` the committed generation in one atomic step (the commit)."""

    @abstractmethod
    def collect_garbage(self, meta: IndexMeta | None = None, spare_since: float | None = None) -> list[str]:
        """Delete files no committed generation references; return them as :meth:`loc` names them.

        ``spare_since``: keep the files of shards written after this time (a writer's uncommitted ones).
        """

    @abstractmethod
    def lock(self, wait_s: float = 0.0) -> AbstractContextManager[Any]:
        """The writer lock: one writer at a time, waiting up to ``wait_s`` for another."""

    def bm25_at(self, generation: int) -> str:
        """Where a reader finds the BM25 index of ``generation`` (a backend may sync a local cache first)."""
        return str(self.bm25_root())

    # ---------------------------------------------------------------- reading
    def meta(self) -> IndexMeta:
        """The committed generation's metadata (:class:`StoreError` when there is none or it is unreadable)."""
        try:
            raw = self._read_index()
        except FileNotFoundError:
            raise StoreError(f"no index at {self.root} (run `ragbatch index DOCS --store {self.root}` first)") from None
        return self._parse_meta(raw)

    def _parse_meta(self, raw: str | bytes) -> IndexMeta:
        where = self.loc(INDEX_FILE)
        try:
            obj = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StoreError(f"{where}: unreadable index metadata ({exc})") from exc
        if not isinstance(obj, dict):
            raise StoreError(f"{where}: unreadable index metadata (a JSON {type(obj).__name__}, not an object)")
        if obj.get("format_version") != FORMAT_VERSION:
            raise StoreError(f"{where}: format version {obj.get('format_version')}, expected {FORMAT_VERSION}")
        obj.pop("retired", None)  # the object store's bookkeeping for its garbage collection (storage/store/s3.py)
        try:
            return IndexMeta.from_json(obj)
        except (TypeError, ValueError) as exc:  # fields missing, unknown or of the wrong shape
            raise StoreError(f"{where}: unreadable index metadata ({exc})") from exc

    def manifest(self, meta: IndexMeta | None = None) -> pa.Table:
        meta = meta if meta is not None else (self.meta() if self.exists() else None)
        if meta is None or meta.manifest is None:
            return MANIFEST_SCHEMA.empty_table()
        try:
            return pq.read_table(_arrow(self._source(meta.manifest)), schema=MANIFEST_SCHEMA)
        except (OSError, pa.ArrowException) as exc:
            raise StoreError(f"{self.loc(meta.manifest)}: unreadable manifest ({exc})") from exc

    def read_shard(self, info: ShardInfo, check_sha: bool = False) -> tuple[torch.Tensor, pa.Table]:
        """Load one shard's tensor and chunk table, checking shape (and optionally checksums).

        With ``check_sha`` each file is read once into memory, hashed and parsed from those bytes, so the
        check costs the hashing only.
        """
        trel, crel = shard_rel(info.name)
        tpath, cpath = self.loc(trel), self.loc(crel)
        srcs: list[Path | bytes] = []
        for rel in (trel, crel):
            try:
                srcs.append(self.read_bytes(rel) if check_sha else self._source(rel))
            except FileNotFoundError:
                raise StoreError(f"{self.loc(rel)}: shard file missing") from None
        if check_sha:
            for p, data, want in ((tpath, srcs[0], info.sha256), (cpath, srcs[1], info.chunks_sha256)):
                got = hashlib.sha256(data).hexdigest()
                if got != want:
                    raise StoreError(
                        f"{p}: checksum mismatch ({INDEX_FILE} expects sha256 {want[:12]}…, the file ({len(data)} "
                        f"bytes) has {got[:12]}…): changed or truncated after it was committed; "
                        f"run `ragbatch verify --store {self.root}`"
                    )
        tsrc, csrc = srcs
        try:
            emb = (load_bytes(tsrc) if isinstance(tsrc, bytes) else load_file(tsrc))["embeddings"]
        except Exception as exc:  # safetensors raises several types on corrupt input
            raise StoreError(f"{tpath}: unreadable shard ({exc})") from exc
        try:
            chunks = read_chunk_table(_arrow(csrc))
        except (OSError, pa.ArrowException) as exc:
            raise StoreError(f"{cpath}: unreadable chunk table ({exc})") from exc
        if emb.shape != (info.rows, info.dim) or chunks.num_rows != info.rows:
            raise StoreError(
                f"{tpath}: shape {tuple(emb.shape)} and {chunks.num_rows} chunk rows "
                f"do not match the metadata ({info.rows}×{info.dim})"
            )
        return emb, chunks

    def read_chunks(self, name: str) -> pa.Table:
        """One shard's chunk table only (no tensor), e.g. for the BM25 index."""
        rel = shard_rel(name)[1]
        try:
            return read_chunk_table(_arrow(self._source(rel)))
        except (OSError, pa.ArrowException) as exc:
            raise StoreError(f"{self.loc(rel)}: unreadable chunk table ({exc})") from exc

    def sync_bm25(self, meta: IndexMeta | None = None, rebuild: bool = False) -> SyncReport:
        """Bring the on-disk BM25 index (storage/store/bm25.py) to the committed generation; the caller holds the lock.

        ``rebuild`` (compaction) drops its deleted documents too, so its statistics are the live chunks' again.
        """
        meta = meta if meta is not None else self.meta()
        report = DiskBM25(self.bm25_root()).sync(meta.generation, lambda: self.manifest(meta), self.read_chunks,
                                                 rebuild=rebuild)
        self.bm25_syncs.append(report)
        return report

    def check_embedder(self, fingerprint: dict[str, Any]) -> None:
        """Refuse a query embedder other than the one that built the store."""
        built = self.meta().embedder
        if built.get("id") != fingerprint.get("id"):
            raise EmbedderMismatchError(
                f"store {self.root} was built with embedder {built.get('name')!r} "
                f"(fingerprint {str(built.get('id'))[:12]}, pooling {built.get('pooling')}, dim {built.get('dim')}) "
                f"but is queried with {fingerprint.get('name')!r} "
                f"(fingerprint {str(fingerprint.get('id'))[:12]}, pooling {fingerprint.get('pooling')}, "
                f"dim {fingerprint.get('dim')}); query with the same embedder or re-index"
            )


    # ---------------------------------------------------------------- writing
    def write_shard(
        self, embeddings: torch.Tensor, chunks: pa.Table, manifest_rows: Sequence[ManifestRow]
    ) -> ShardWrite:
        """Write an immutable shard pair (uncommitted until :meth:`commit`), each file under a name never used."""
        if embeddings.shape[0] != chunks.num_rows:
            raise ValueError(f"{embeddings.shape[0]} embeddings for {chunks.num_rows} chunks")
        name = new_shard_name()
        trel, crel = shard_rel(name)
        emb = embeddings.detach().to("cpu", torch.float32).contiguous()
        tdata = save_bytes({"embeddings": emb}, metadata={"format": "ragbatch", "rows": str(emb.shape[0])})
        self._put_once(trel, tdata)
        crash_point("mid-shard")
        sink = io.BytesIO()
        pq.write_table(conform_chunks(chunks), sink)
        cdata = sink.getvalue()
        self._put_once(crel, cdata)
        crash_point("after-shard")
        info = ShardInfo(name=name, rows=int(emb.shape[0]), dim=int(emb.shape[1]) if emb.ndim == 2 else 0,
                         dtype="float32", sha256=hashlib.sha256(tdata).hexdigest(),
                         chunks_sha256=hashlib.sha256(cdata).hexdigest())
        return ShardWrite(info=info, manifest_rows=[replace(r, shard=name) for r in manifest_rows])

    def commit(
        self,
        embedder: dict[str, Any],
        dim: int,
        writes: list[ShardWrite],
        remove_doc_ids: set[str] | frozenset[str] = frozenset(),
        replace_all: bool = False,
        drop_shards: set[str] | frozenset[str] = frozenset(),
        rebuild_bm25: bool = False,
    ) -> IndexMeta:
        """Make shards live and documents removed in one atomic step (the rename of index.json).

        ``replace_all`` starts from an empty manifest (a full rebuild, e.g. after an embedder change).
        """
        old = self.meta() if self.exists() else None
        if old is not None and not replace_all and old.embedder.get("id") != embedder.get("id"):
            raise EmbedderMismatchError("commit with another embedder needs replace_all=True")
        before: dict[str, ManifestRow] = {} if old is None else {
            r["doc_id"]: ManifestRow.from_record(r) for r in self.manifest(old).to_pylist()}
        manifest = {} if replace_all else dict(before)
        for doc_id in remove_doc_ids:
            manifest.pop(doc_id, None)
        generation = (old.generation if old else 0) + 1
        for w in writes:
            for row in w.manifest_rows:
                manifest[row.doc_id] = _stamped(row, before.get(row.doc_id), generation)
        shards = [] if (old is None or replace_all) else [s for s in old.shards if s.name not in drop_shards]
        shards += [w.info for w in writes]
        live_per_shard: dict[str, int] = {}
        for row in manifest.values():
            live_per_shard[row.shard] = live_per_shard.get(row.shard, 0) + int(row.n_chunks)
        # A shard with no live row is dead weight: drop it from the index now.
        shards = [s for s in shards if live_per_shard.get(s.name, 0) > 0]
        rows = sorted(manifest.values(), key=lambda r: r.doc_id)
        meta = IndexMeta(
            embedder=embedder,
            dim=dim,
            generation=generation,
            manifest=self.manifest_name(generation),
            shards=shards,
            live_rows=sum(live_per_shard.values()),
            total_rows=sum(s.rows for s in shards),
            documents=len(rows),
            updated_at=time.time(),
        )
        self._publish(old, meta, manifest_table(rows))
        # The BM25 index follows in its own (tantivy) commit. A crash before it leaves that index one generation
        # behind, which readers detect (they then build BM25 in memory) and the next commit or index run repairs.
        self.sync_bm25(meta, rebuild=rebuild_bm25)
        crash_point("after-bm25")
        return meta

    # ---------------------------------------------------------------- checking
    def verify(self) -> VerifyReport:
        """Check the committed generation end to end; ``problems`` (each naming its file) is empty when healthy.

        Every shard listed in ``index.json`` exists with the recorded sha256, its safetensors header and
        chunk Parquet are readable and hold ``rows × dim`` float32 rows; the manifest is readable; each
        manifest document's ``n_chunks`` equals its live rows, which are its chunk indices 0..n-1 exactly
        once; no chunk id is live twice; the live row count equals ``live_rows``; live rows have unit norm
        within 1e-3. Files no generation references are listed as orphans, not problems. Readers take no
        lock: if a writer commits (and deletes replaced files) while the check runs, it is redone on the new
        generation.
        """
        for _ in range(3):
            rep = check_once(self)
            try:
                if rep.ok or self.meta().generation == rep.generation:
                    return rep
            except StoreError:
                return rep
        return rep

    # ---------------------------------------------------------------- compaction
    def compact(
        self, min_dead_ratio: float = 0.0, *, locked: bool = False, lock_wait_s: float = 0.0,
        shard_rows: int = COMPACT_SHARD_ROWS,
    ) -> CompactReport:
        """Rewrite every shard whose dead-row ratio exceeds ``min_dead_ratio`` into new shards of live rows.

        Embeddings are copied, never recomputed; the checksums of the shards read are checked first, so a
        corrupt shard is refused rather than copied. Documents are never split across shards; the new
        shards are committed through :meth:`commit` (the manifest re-pointed, the old shards dropped in the
        same atomic step) and the old files deleted. ``locked=True`` when the caller already holds the
        writer lock (the index flow); otherwise the lock is taken here.
        """
        if locked:
            return compact_store(self, min_dead_ratio, shard_rows)
        with self.lock(wait_s=lock_wait_s):
            return compact_store(self, min_dead_ratio, shard_rows)

def _stamped(row: ManifestRow, prev: ManifestRow | None, generation: int) -> ManifestRow:
    """``row`` with the generations that added its doc id and committed its content (schema.ManifestRow): kept
    from ``prev`` while the content is the same (compaction, a re-write), ``generation`` where it is new."""
    if prev is None:
        return replace(row, added_at=generation, changed_at=generation)
    same = prev.sha256 == row.sha256
    return replace(row, added_at=prev.added_at, changed_at=prev.changed_at if same else generation)


def new_shard_name() -> str:
    """A shard name never used before: the time and 32 random bits (object stores also refuse to overwrite)."""
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"


def _arrow(src: Path | bytes) -> Any:
    """A Parquet source for pyarrow: a path as it is, bytes as a buffer."""
    return pa.BufferReader(src) if isinstance(src, bytes) else src
