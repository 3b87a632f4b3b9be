"""The store on object storage (``s3://bucket/prefix``): the same files as a local store, committed without rename.

Object stores have no rename and no flock, so a commit is built from what they do have:

- Shards, chunk tables and manifests are written once under names never used before (a shard's time and random
  suffix, ``manifest-<generation>-<random>.parquet``) with ``If-None-Match: *``, so nothing is ever overwritten.
- ``index.json`` is the only object that changes. It is replaced with ``If-Match`` on the ETag it was read at
  (``If-None-Match: *`` for the first generation), so of two writers that read the same generation exactly one
  commits; the other gets a :class:`StoreError` and nothing of its commit becomes live.
- The writer lock is a lease object (storage/store/lease.py), renewed before every commit.
- Readers read ``index.json`` once, then only the immutable objects it names.
- Garbage collection deletes an object only when no committed generation references it and it has been
  unreferenced for ``gc_grace_s`` (objects a commit dropped are listed with the time in ``index.json``'s
  ``retired``; objects never committed count from their LastModified), so a slow reader's generation stays
  readable for that long.

BM25 (tantivy) needs a local folder: each machine keeps one per store under ``$RAGBATCH_HOME/bm25-cache/``,
brought to the committed generation from the store's chunk tables (by document id, as for a local store) by the
writer after each commit and by a reader that finds it behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from storage.fs import split_s3, store_location
from storage.hooks import crash_point
from storage.paths import home
from storage.store.base import Store
from storage.store.bm25 import DiskBM25, SyncReport
from storage.store.lease import HELD, LEASE_FILE, S3Lease
from storage.store.meta import INDEX_FILE, IndexMeta, StoreError
from storage.store.s3_objects import PreconditionFailed, S3Objects
from storage.store.schema import shard_rel


@dataclass(frozen=True)
class S3Settings:
    """How long unreferenced objects are kept, and the writer lease's TTL (``RAGBATCH_S3_*`` overrides)."""

    gc_grace_s: float = 3600.0
    lease_ttl_s: float = 60.0

    @classmethod
    def from_env(cls) -> S3Settings:
        d = cls()
        return cls(gc_grace_s=float(os.environ.get("RAGBATCH_S3_GC_GRACE_S", d.gc_grace_s)),
                   lease_ttl_s=float(os.environ.get("RAGBATCH_S3_LEASE_TTL_S", d.lease_ttl_s)))


class S3Store(Store):
    """A store at ``s3://bucket/prefix`` (see the module docstring); the interface of :class:`Store`."""

    def __init__(self, root: str | Path, settings: S3Settings | None = None):
        self.root: str = store_location(root)
        self.objects = S3Objects(*split_s3(self.root))
        self.settings = settings or S3Settings.from_env()
        self.bm25_syncs: list[SyncReport] = []
        self._etag: str | None = None  # ETag of index.json at the last meta() read: what a commit replaces
        self._retired: list[dict[str, Any]] = []  # index.json's "retired" list at that read

    # ---------------------------------------------------------------- file hooks
    def loc(self, rel: str) -> str:
        return self.objects.url(rel)

    def read_bytes(self, rel: str) -> bytes:
        return self.objects.get(rel)[0]

    def _source(self, rel: str) -> bytes:
        return self.read_bytes(rel)

    def size(self, rel: str) -> int:
        info = self.objects.head(rel)
        return info.size if info else 0

    def bm25_root(self) -> Path:
        """This machine's cache folder for the store's BM25 index (one per store URL)."""
        root = home() / "bm25-cache" / hashlib.sha256(self.root.encode()).hexdigest()[:16]
        root.mkdir(parents=True, exist_ok=True)
        (root / "store.txt").write_text(self.root + "\n")
        return root

    @contextlib.contextmanager
    def _bm25_guard(self) -> Iterator[Path]:
        """The local cache folder, flock()ed: a reader and a writer on one machine never sync it at once."""
        root = self.bm25_root()
        with open(root / ".sync.lock", "a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield root
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def bm25_at(self, generation: int) -> str:
        """The local BM25 cache, synced to ``generation`` first when it is behind and that is still committed."""
        with self._bm25_guard() as root:
            if DiskBM25(root).open(generation) is None:
                meta = self.meta()
                if meta.generation == generation:
                    DiskBM25(root).sync(generation, lambda: self.manifest(meta), self.read_chunks)
            return str(root)

    def sync_bm25(self, meta: IndexMeta | None = None, rebuild: bool = False) -> SyncReport:
        with self._bm25_guard():
            return super().sync_bm25(meta, rebuild)

    def manifest_name(self, generation: int) -> str:
        return f"manifest-{generation:06d}-{uuid.uuid4().hex[:8]}.parquet"

    def unreferenced(self, meta: IndexMeta) -> list[str]:
        keep = self._referenced(meta)
        return sorted(self.loc(o.rel) for o in self.objects.list() if o.rel not in keep)

    @staticmethod
    def _referenced(meta: IndexMeta) -> set[str]:
        keep = {INDEX_FILE, LEASE_FILE, meta.manifest or ""}
        return keep | {rel for s in meta.shards for rel in shard_rel(s.name)}

    # ---------------------------------------------------------------- reading
    def exists(self) -> bool:
        return self.objects.head(INDEX_FILE) is not None

    def _read_index(self) -> bytes:
        """``index.json``, remembering its ETag (what a commit replaces) and its ``retired`` list."""
        raw, etag = self.objects.get(INDEX_FILE)
        self._etag = etag
        try:
            retired = json.loads(raw).get("retired")
        except (ValueError, AttributeError):
            retired = None  # unreadable: meta() says so
        self._retired = retired if isinstance(retired, list) else []
        return raw

    # ---------------------------------------------------------------- writing (Store.write_shard puts through here)
    def _put_once(self, rel: str, data: bytes) -> None:
        try:
            self.objects.put(rel, data, if_none_match=True)
        except PreconditionFailed:
            raise StoreError(f"{self.loc(rel)}: already exists; immutable objects are never overwritten") from None

    def _publish(self, old: IndexMeta | None, meta: IndexMeta, manifest: pa.Table) -> None:
        """Upload the manifest, renew the lease, then replace ``index.json`` conditionally (the commit)."""
        sink = io.BytesIO()
        pq.write_table(manifest, sink)
        self._put_once(meta.manifest or "", sink.getvalue())
        crash_point("after-manifest")
        lease = HELD.get(self.root)
        if lease is not None:
            lease.renew()  # fails if the lease expired and another writer took it: then nothing is committed
        now = time.time()
        grace = self.settings.gc_grace_s
        retired = [r for r in self._retired if isinstance(r, dict) and now - float(r.get("since", 0)) < grace + 86400]
        if old is not None:
            live = self._referenced(meta)
            retired += [{"name": rel, "since": now} for rel in self._referenced(old) - live
                        if rel not in (INDEX_FILE, LEASE_FILE, "")]
        body = (json.dumps(dict(meta.to_json(), retired=retired), indent=2, sort_keys=True) + "\n").encode()
        crash_point("before-index-json")
        try:
            if old is None:
                self._etag = self.objects.put(INDEX_FILE, body, if_none_match=True)
            else:
                self._etag = self.objects.put(INDEX_FILE, body, if_match=self._etag)
        except PreconditionFailed:
            base = f"generation {old.generation}" if old else "an empty store"
            raise StoreError(
                f"{self.loc(INDEX_FILE)}: another writer committed since this one read {base}; this commit "
                f"(generation {meta.generation}) was not made (its objects are orphans the next writer deletes). "
                "Writers should hold the store's lease: run one index at a time"
            ) from None
        self._retired = retired
        crash_point("after-index-json")
        self.collect_garbage(meta)

    def collect_garbage(self, meta: IndexMeta | None = None, spare_since: float | None = None) -> list[str]:
        """Delete objects no committed generation references once they have been unreferenced for the grace period.

        ``spare_since`` is the local store's notion (its writer's uncommitted shards); here the grace period
        spares them, as it spares a slow reader's generation.
        """
        meta = meta if meta is not None else self.meta()
        keep = self._referenced(meta)
        since = {str(r.get("name")): float(r.get("since", 0)) for r in self._retired if isinstance(r, dict)}
        now, grace = time.time(), self.settings.gc_grace_s
        removed = []
        for obj in self.objects.list():
            if obj.rel in keep:
                continue
            if now - max(obj.mtime, since.get(obj.rel, 0.0)) > grace:
                self.objects.delete(obj.rel)
                removed.append(self.loc(obj.rel))
        return removed

    # ---------------------------------------------------------------- locking
    def lock(self, wait_s: float = 0.0) -> S3Lease:
        return S3Lease(self.objects, self.root, wait_s=wait_s, ttl_s=self.settings.lease_ttl_s)
