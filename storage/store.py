"""The on-disk index store: chunk tables, embedding shards, the manifest and the index metadata.

Layout of a store directory::

    index.json                     committed last, atomically: the one source of truth
    manifest-<generation>.parquet  one row per document (id, path, sha256, size, mtime, chunks, shard, ...)
    shards/<shard>.safetensors     float embeddings, one row per chunk, unit L2 norm
    shards/<shard>.chunks.parquet  the chunks of that shard, row-aligned with the tensor
    .lock                          held by the one writer (pid and host inside)

Shards are immutable. A chunk row is *live* when its document's manifest entry points at its shard
with the same content hash; rows of removed or changed documents are tombstoned implicitly and dropped
by compaction. A writer that dies before renaming ``index.json`` leaves the previous generation intact;
files that no committed generation references are orphans and are deleted by the next writer.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file

from storage.atomic import atomic_path, remove_orphan_tmp, sha256_file, write_json_atomic

FORMAT_VERSION = 1
INDEX_FILE = "index.json"
LOCK_FILE = ".lock"

CHUNK_SCHEMA = pa.schema(
    [
        ("chunk_id", pa.string()),
        ("doc_id", pa.string()),
        ("doc_sha256", pa.string()),
        ("chunk_index", pa.int32()),
        ("text", pa.string()),
        ("char_start", pa.int64()),
        ("char_end", pa.int64()),
        ("n_tokens", pa.int32()),
    ]
)

MANIFEST_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("path", pa.string()),
        ("sha256", pa.string()),
        ("size", pa.int64()),
        ("mtime", pa.float64()),
        ("n_chunks", pa.int32()),
        ("shard", pa.string()),
        ("embedder", pa.string()),
        ("chunking", pa.string()),
        ("status", pa.string()),
        ("indexed_at", pa.float64()),
    ]
)


class StoreError(RuntimeError):
    """A store that cannot be used as asked (missing, corrupt, locked, wrong embedder)."""


class EmbedderMismatchError(StoreError):
    """The store was built by another embedder than the one used to query it."""


@dataclass
class ShardInfo:
    name: str
    rows: int
    dim: int
    dtype: str
    sha256: str
    chunks_sha256: str


@dataclass
class IndexMeta:
    """The content of ``index.json``."""

    embedder: dict[str, Any]
    dim: int
    generation: int = 0
    manifest: str | None = None
    shards: list[ShardInfo] = field(default_factory=list)
    format_version: int = FORMAT_VERSION
    dtype: str = "float32"
    live_rows: int = 0
    total_rows: int = 0
    documents: int = 0
    updated_at: float = 0.0

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> IndexMeta:
        obj = dict(obj)
        obj["shards"] = [ShardInfo(**s) for s in obj.get("shards", [])]
        return cls(**obj)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ShardWrite:
    """A shard written to disk but not yet committed, with the manifest rows it makes live."""

    info: ShardInfo
    manifest_rows: list[dict[str, Any]]


class Store:
    """A directory holding one index. Readers need no lock; writers hold ``.lock``."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.shard_dir = self.root / "shards"

    # ---------------------------------------------------------------- reading
    def exists(self) -> bool:
        return (self.root / INDEX_FILE).exists()

    def meta(self) -> IndexMeta:
        path = self.root / INDEX_FILE
        if not path.exists():
            raise StoreError(f"no index at {self.root} (run `ragbatch index DOCS --store {self.root}` first)")
        try:
            obj = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise StoreError(f"{path}: unreadable index metadata ({exc})") from exc
        if obj.get("format_version") != FORMAT_VERSION:
            raise StoreError(f"{path}: format version {obj.get('format_version')}, expected {FORMAT_VERSION}")
        return IndexMeta.from_json(obj)

    def manifest(self, meta: IndexMeta | None = None) -> pa.Table:
        meta = meta if meta is not None else (self.meta() if self.exists() else None)
        if meta is None or meta.manifest is None:
            return MANIFEST_SCHEMA.empty_table()
        path = self.root / meta.manifest
        try:
            return pq.read_table(path, schema=MANIFEST_SCHEMA)
        except (OSError, pa.ArrowException) as exc:
            raise StoreError(f"{path}: unreadable manifest ({exc})") from exc

    def shard_paths(self, name: str) -> tuple[Path, Path]:
        return self.shard_dir / f"{name}.safetensors", self.shard_dir / f"{name}.chunks.parquet"

    def read_shard(self, info: ShardInfo, check_sha: bool = False) -> tuple[torch.Tensor, pa.Table]:
        """Load one shard's tensor and chunk table, checking shape (and optionally checksums)."""
        tpath, cpath = self.shard_paths(info.name)
        for p in (tpath, cpath):
            if not p.exists():
                raise StoreError(f"{p}: shard file missing")
        if check_sha:
            for p, want in ((tpath, info.sha256), (cpath, info.chunks_sha256)):
                got = sha256_file(p)
                if got != want:
                    raise StoreError(f"{p}: checksum mismatch (expected {want[:12]}…, found {got[:12]}…)")
        try:
            emb = load_file(tpath)["embeddings"]
        except Exception as exc:  # safetensors raises several types on corrupt input
            raise StoreError(f"{tpath}: unreadable shard ({exc})") from exc
        try:
            chunks = pq.read_table(cpath, schema=CHUNK_SCHEMA)
        except (OSError, pa.ArrowException) as exc:
            raise StoreError(f"{cpath}: unreadable chunk table ({exc})") from exc
        if emb.shape != (info.rows, info.dim) or chunks.num_rows != info.rows:
            raise StoreError(
                f"{tpath}: shape {tuple(emb.shape)} and {chunks.num_rows} chunk rows "
                f"do not match the metadata ({info.rows}×{info.dim})"
            )
        return emb, chunks

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
        self, embeddings: torch.Tensor, chunks: pa.Table, manifest_rows: list[dict[str, Any]]
    ) -> ShardWrite:
        """Write an immutable shard pair (uncommitted until :meth:`commit`)."""
        if embeddings.shape[0] != chunks.num_rows:
            raise ValueError(f"{embeddings.shape[0]} embeddings for {chunks.num_rows} chunks")
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        tpath, cpath = self.shard_paths(name)
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        emb = embeddings.detach().to("cpu", torch.float32).contiguous()
        with atomic_path(tpath) as tmp:
            save_file({"embeddings": emb}, str(tmp), metadata={"format": "ragbatch", "rows": str(emb.shape[0])})
        with atomic_path(cpath) as tmp:
            pq.write_table(chunks.cast(CHUNK_SCHEMA), tmp)
        info = ShardInfo(
            name=name,
            rows=int(emb.shape[0]),
            dim=int(emb.shape[1]) if emb.ndim == 2 else 0,
            dtype="float32",
            sha256=sha256_file(tpath),
            chunks_sha256=sha256_file(cpath),
        )
        rows = [dict(r, shard=name) for r in manifest_rows]
        return ShardWrite(info=info, manifest_rows=rows)

    def commit(
        self,
        embedder: dict[str, Any],
        dim: int,
        writes: list[ShardWrite],
        remove_doc_ids: set[str] | frozenset[str] = frozenset(),
        replace_all: bool = False,
        drop_shards: set[str] | frozenset[str] = frozenset(),
    ) -> IndexMeta:
        """Make shards live and documents removed in one atomic step (the rename of index.json).

        ``replace_all`` starts from an empty manifest (a full rebuild, e.g. after an embedder change).
        """
        old = self.meta() if self.exists() else None
        if old is not None and not replace_all and old.embedder.get("id") != embedder.get("id"):
            raise EmbedderMismatchError("commit with another embedder needs replace_all=True")
        manifest = {} if (old is None or replace_all) else {r["doc_id"]: r for r in self.manifest(old).to_pylist()}
        for doc_id in remove_doc_ids:
            manifest.pop(doc_id, None)
        for w in writes:
            for row in w.manifest_rows:
                manifest[row["doc_id"]] = row
        shards = [] if (old is None or replace_all) else [s for s in old.shards if s.name not in drop_shards]
        shards += [w.info for w in writes]
        live_per_shard: dict[str, int] = {}
        for row in manifest.values():
            live_per_shard[row["shard"]] = live_per_shard.get(row["shard"], 0) + int(row["n_chunks"])
        # A shard with no live row is dead weight: drop it from the index now.
        shards = [s for s in shards if live_per_shard.get(s.name, 0) > 0]
        generation = (old.generation if old else 0) + 1
        manifest_name = f"manifest-{generation:06d}.parquet"
        rows = sorted(manifest.values(), key=lambda r: r["doc_id"])
        with atomic_path(self.root / manifest_name) as tmp:
            pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), tmp)
        meta = IndexMeta(
            embedder=embedder,
            dim=dim,
            generation=generation,
            manifest=manifest_name,
            shards=shards,
            live_rows=sum(live_per_shard.values()),
            total_rows=sum(s.rows for s in shards),
            documents=len(rows),
            updated_at=time.time(),
        )
        write_json_atomic(self.root / INDEX_FILE, meta.to_json())
        self.collect_garbage(meta)
        return meta

    def collect_garbage(self, meta: IndexMeta | None = None) -> list[Path]:
        """Delete files no committed generation references (old manifests, orphan shards, temp files)."""
        meta = meta if meta is not None else self.meta()
        keep = {INDEX_FILE, LOCK_FILE, meta.manifest}
        keep_shards = {n for s in meta.shards for n in (f"{s.name}.safetensors", f"{s.name}.chunks.parquet")}
        removed: list[Path] = []
        remove_orphan_tmp(self.root)
        for p in self.root.glob("manifest-*.parquet"):
            if p.name not in keep:
                p.unlink(missing_ok=True)
                removed.append(p)
        if self.shard_dir.exists():
            for p in self.shard_dir.iterdir():
                if p.is_file() and p.name not in keep_shards:
                    p.unlink(missing_ok=True)
                    removed.append(p)
        return removed

    # ---------------------------------------------------------------- locking
    def lock(self, wait_s: float = 0.0) -> StoreLock:
        return StoreLock(self.root / LOCK_FILE, wait_s=wait_s)


class StoreLock:
    """An exclusive writer lock: a file created with O_EXCL holding the owner's pid and host.

    A lock left by a dead process on this host is taken over; one held by a live process (or
    another host) makes the second writer wait up to ``wait_s`` and then fail with who holds it.
    """

    def __init__(self, path: Path, wait_s: float = 0.0):
        self.path = path
        self.wait_s = wait_s
        self.held = False

    def __enter__(self) -> StoreLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.wait_s
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and self._is_stale(holder):
                    self.path.unlink(missing_ok=True)
                    continue
                if time.monotonic() >= deadline:
                    who = f"pid {holder.get('pid')} on {holder.get('host')}" if holder else "an unknown process"
                    raise StoreError(
                        f"store {self.path.parent} is locked by {who} (another index run is writing it); "
                        f"wait for it to finish, or remove {self.path} if that process is gone"
                    ) from None
                time.sleep(0.2)
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self.held = True
            return self

    def __exit__(self, *exc: object) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def _holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    @staticmethod
    def _is_stale(holder: dict[str, Any]) -> bool:
        if holder.get("host") != socket.gethostname():
            return False
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, KeyError, ValueError, TypeError):
            return False
        return False
