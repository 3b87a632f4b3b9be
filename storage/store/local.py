"""The store in a local folder (POSIX): commits by rename, one writer by flock (storage/store/lock.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from storage.atomic import TMP_MARK, remove_orphan_tmp, write_bytes_atomic, write_json_atomic
from storage.fs import local_path
from storage.hooks import crash_point
from storage.store.base import Store
from storage.store.bm25 import SyncReport
from storage.store.lock import LOCK_FILE, StoreLock
from storage.store.meta import INDEX_FILE, IndexMeta, StoreError
from storage.store.schema import SHARDS_DIR, shard_rel


class LocalStore(Store):
    """A store in a folder (a path or ``file://`` URL): files are replaced by an fsynced rename."""

    root: Path

    def __init__(self, root: str | Path):
        self.root = local_path(root)
        self.shard_dir = self.root / SHARDS_DIR
        self.bm25_syncs: list[SyncReport] = []

    # ---------------------------------------------------------------- file hooks
    def loc(self, rel: str) -> str:
        return str(self.root / rel)

    def read_bytes(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()

    def _source(self, rel: str) -> Path:
        path = self.root / rel
        if not path.exists():
            raise FileNotFoundError(str(path))
        return path

    def size(self, rel: str) -> int:
        try:
            return (self.root / rel).stat().st_size
        except FileNotFoundError:
            return 0

    def exists(self) -> bool:
        return (self.root / INDEX_FILE).exists()

    def _read_index(self) -> bytes:
        path = self.root / INDEX_FILE
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise
        except OSError as exc:  # a local file that exists but cannot be read: the store's problem, named
            raise StoreError(f"{path}: unreadable index metadata ({exc})") from exc

    def bm25_root(self) -> Path:
        """The store itself: its BM25 index is ``bm25/`` in the folder."""
        return self.root

    def manifest_name(self, generation: int) -> str:
        return f"manifest-{generation:06d}.parquet"

    def unreferenced(self, meta: IndexMeta) -> list[str]:
        return [str(p) for p in self._unreferenced(meta)]

    def shard_paths(self, name: str) -> tuple[Path, Path]:
        """A shard's two files in this folder."""
        tensor, chunks = shard_rel(name)
        return self.root / tensor, self.root / chunks

    # ---------------------------------------------------------------- writing
    def _put_once(self, rel: str, data: bytes) -> None:
        """Write a new file of the store atomically (fsynced, then renamed into place)."""
        write_bytes_atomic(self.root / rel, data)

    def _publish(self, old: IndexMeta | None, meta: IndexMeta, manifest: pa.Table) -> None:
        """Write the new manifest, then rename ``index.json`` over the old one (the commit), then collect garbage."""
        sink = io.BytesIO()
        pq.write_table(manifest, sink)
        self._put_once(meta.manifest or "", sink.getvalue())
        crash_point("after-manifest")
        write_json_atomic(
            self.root / INDEX_FILE, meta.to_json(), before_replace=lambda: crash_point("before-index-json")
        )
        crash_point("after-index-json")
        # Shards of this writer that are still being written or wait for their commit (parallel batches on
        # Dask workers) are newer than its lock: spare them; the shards this commit dropped go now.
        self.collect_garbage(meta, spare_since=self._lock_since())
        if old is not None:
            live = {s.name for s in meta.shards}
            for s in old.shards:
                if s.name not in live:
                    for p in self.shard_paths(s.name):
                        p.unlink(missing_ok=True)

    def _lock_since(self) -> float | None:
        """When the current writer took the lock (None without a readable lock)."""
        try:
            return float(json.loads((self.root / LOCK_FILE).read_text())["since"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def collect_garbage(self, meta: IndexMeta | None = None, spare_since: float | None = None) -> list[str]:
        """Delete files no committed generation references (old manifests, orphan shards, temp files).

        ``spare_since``: keep unreferenced files under ``shards/`` modified after this time.
        """
        meta = meta if meta is not None else self.meta()
        keep, keep_shards = self._kept(meta)
        removed: list[str] = []
        if spare_since is None:
            remove_orphan_tmp(self.root)
        else:
            for p in self.root.glob(f"{TMP_MARK}*"):
                p.unlink(missing_ok=True)
        for p in self.root.glob("manifest-*.parquet"):
            if p.name not in keep:
                p.unlink(missing_ok=True)
                removed.append(str(p))
        if self.shard_dir.exists():
            for p in self.shard_dir.iterdir():
                if spare_since is not None:
                    try:
                        if p.stat().st_mtime >= spare_since - 1:
                            continue
                    except FileNotFoundError:
                        continue
                if p.is_file() and p.name not in keep_shards:
                    p.unlink(missing_ok=True)
                    removed.append(str(p))
        return removed

    @staticmethod
    def _kept(meta: IndexMeta) -> tuple[set[str], set[str]]:
        """The store's own files a generation keeps (top level) and its shards' files (under ``shards/``)."""
        return ({INDEX_FILE, LOCK_FILE, meta.manifest or ""},
                {n for s in meta.shards for n in (f"{s.name}.safetensors", f"{s.name}.chunks.parquet")})

    def _unreferenced(self, meta: IndexMeta) -> list[Path]:
        keep, keep_shards = self._kept(meta)
        out = [p for p in self.root.glob("manifest-*.parquet") if p.name not in keep]
        out += [p for p in self.root.glob(f"{TMP_MARK}*")]
        if self.shard_dir.exists():
            out += [p for p in self.shard_dir.iterdir() if p.is_file() and p.name not in keep_shards]
        return sorted(out)


    # ---------------------------------------------------------------- locking
    def lock(self, wait_s: float = 0.0) -> StoreLock:
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"{self.root} is a file, not a store (--store names a folder, new or existing)")
        return StoreLock(self.root / LOCK_FILE, wait_s=wait_s)
