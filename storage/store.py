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

:meth:`Store.verify` checks a store end to end (checksums, headers, row counts, liveness, norms) and
:meth:`Store.compact` rewrites shards with many tombstoned rows into shards of live rows only.

Test hook (crash tests only, never set it otherwise): ``RAGBATCH_TEST_KILL_AT=POINT:N[,POINT:N...]`` makes
the process SIGKILL itself the N-th time (counted per process, from 1) it reaches POINT; ``POINT:N:stall``
makes it stop there instead, holding its lock, until it is killed from outside (so a test can meet a live writer
deterministically, without racing it):

- ``mid-shard``          a shard's tensor file is in place, its chunk table is not yet written
- ``after-shard``        both files of a shard are in place, not yet committed
- ``after-manifest``     a commit's new manifest is in place, ``index.json`` not yet written
- ``before-index-json``  ``index.json``'s temporary file is written and fsynced, not yet renamed
- ``after-index-json``   ``index.json`` is renamed (committed), garbage not yet collected, BM25 not yet synced
- ``after-bm25``         the BM25 index (``bm25/``) is synced to the new generation
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import signal
import socket
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import load_file, save_file

from storage.atomic import TMP_MARK, atomic_path, remove_orphan_tmp, sha256_file, write_json_atomic
from storage.bm25 import DiskBM25, SyncReport

FORMAT_VERSION = 1
INDEX_FILE = "index.json"
LOCK_FILE = ".lock"
LOCK_GUARD_FILE = ".lock.guard"  # flock()ed while a stale lock is taken over, so two takers cannot race
EMPTY_LOCK_STALE_S = 30.0  # an empty/unreadable lock (writer died between create and write) older than this is stale
NORM_TOLERANCE = 1e-3
COMPACT_SHARD_ROWS = 65536  # compaction packs live rows into shards of at most this many rows (whole documents)
KILL_ENV = "RAGBATCH_TEST_KILL_AT"

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

    @property
    def dead_rows(self) -> int:
        return self.total_rows - self.live_rows

    @property
    def dead_ratio(self) -> float:
        """The share of stored rows that are tombstoned (0 for an empty store)."""
        return self.dead_rows / self.total_rows if self.total_rows else 0.0


@dataclass
class ShardWrite:
    """A shard written to disk but not yet committed, with the manifest rows it makes live."""

    info: ShardInfo
    manifest_rows: list[dict[str, Any]]


@dataclass
class VerifyReport:
    """What :meth:`Store.check` found: ``problems`` is empty for a healthy store."""

    store: str
    problems: list[str] = field(default_factory=list)
    generation: int = 0
    documents: int = 0
    shards: int = 0
    live_rows: int = 0
    total_rows: int = 0
    orphans: list[str] = field(default_factory=list)  # unreferenced files (harmless; the next writer deletes them)
    bm25: str = ""  # the state of the on-disk BM25 index (derived data: behind is not a problem)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class CompactReport:
    store: str
    generation: int = 0
    compacted: list[str] = field(default_factory=list)  # shards rewritten (and then deleted)
    written: list[str] = field(default_factory=list)  # the new shards holding their live rows
    rows_copied: int = 0
    dead_rows_dropped: int = 0
    shards_before: int = 0
    shards_after: int = 0
    dead_ratio_before: float = 0.0
    dead_ratio_after: float = 0.0
    bytes_freed: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def kill_point(point: str) -> None:
    """The crash-test hook (see the module docstring): SIGKILL this process at the configured point."""
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    count = _KILL_COUNTS[point] = _KILL_COUNTS.get(point, 0) + 1
    for item in spec.split(","):
        name, _, rest = item.strip().partition(":")
        n, _, action = rest.partition(":")
        if name == point and count == int(n or 1):
            if action == "stall":
                while True:
                    time.sleep(3600)
            os.kill(os.getpid(), signal.SIGKILL)


_KILL_COUNTS: dict[str, int] = {}


def live_keys(manifest: pa.Table) -> set[tuple[str, str, str]]:
    """(doc_id, shard, sha256) of every manifest entry: a chunk row is live when its triple is in here."""
    return set(
        zip(manifest["doc_id"].to_pylist(), manifest["shard"].to_pylist(), manifest["sha256"].to_pylist(), strict=True)
    )


def live_mask(chunks: pa.Table, shard: str, keys: set[tuple[str, str, str]]) -> list[bool]:
    """Which rows of one shard's chunk table are live under the manifest ``keys``."""
    return [
        (d, shard, h) in keys
        for d, h in zip(chunks["doc_id"].to_pylist(), chunks["doc_sha256"].to_pylist(), strict=True)
    ]


def read_safetensors_header(path: Path) -> tuple[dict[str, Any], int, int]:
    """The JSON header of a safetensors file, its length and the file size (without reading the data)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise ValueError(f"{size} bytes, too short for a safetensors header")
        n = int.from_bytes(raw, "little")
        if n > size - 8:
            raise ValueError(f"header length {n} exceeds the file size {size} (truncated?)")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    return header, n, size


class Store:
    """A directory holding one index. Readers need no lock; writers hold ``.lock``."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.shard_dir = self.root / "shards"
        self.bm25_syncs: list[SyncReport] = []  # what this object's commits did to the BM25 index

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
        if not isinstance(obj, dict):
            raise StoreError(f"{path}: unreadable index metadata (a JSON {type(obj).__name__}, not an object)")
        if obj.get("format_version") != FORMAT_VERSION:
            raise StoreError(f"{path}: format version {obj.get('format_version')}, expected {FORMAT_VERSION}")
        try:
            return IndexMeta.from_json(obj)
        except (TypeError, ValueError) as exc:  # fields missing, unknown or of the wrong shape
            raise StoreError(f"{path}: unreadable index metadata ({exc})") from exc

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
        """Load one shard's tensor and chunk table, checking shape (and optionally checksums).

        With ``check_sha`` each file is read once into memory, hashed and parsed from those bytes, so the
        check costs the hashing only.
        """
        tpath, cpath = self.shard_paths(info.name)
        for p in (tpath, cpath):
            if not p.exists():
                raise StoreError(f"{p}: shard file missing")
        tsrc: Any = tpath
        csrc: Any = cpath
        if check_sha:
            blobs = []
            for p, want in ((tpath, info.sha256), (cpath, info.chunks_sha256)):
                data = p.read_bytes()
                got = hashlib.sha256(data).hexdigest()
                if got != want:
                    raise StoreError(
                        f"{p}: checksum mismatch ({INDEX_FILE} expects sha256 {want[:12]}…, the file ({len(data)} "
                        f"bytes) has {got[:12]}…): changed or truncated after it was committed; "
                        f"run `ragbatch verify --store {self.root}`"
                    )
                blobs.append(data)
            tsrc, csrc = blobs[0], pa.BufferReader(blobs[1])
        try:
            emb = (load_bytes(tsrc) if isinstance(tsrc, bytes) else load_file(tsrc))["embeddings"]
        except Exception as exc:  # safetensors raises several types on corrupt input
            raise StoreError(f"{tpath}: unreadable shard ({exc})") from exc
        try:
            chunks = pq.read_table(csrc, schema=CHUNK_SCHEMA)
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
        path = self.shard_paths(name)[1]
        try:
            return pq.read_table(path, schema=CHUNK_SCHEMA)
        except (OSError, pa.ArrowException) as exc:
            raise StoreError(f"{path}: unreadable chunk table ({exc})") from exc

    def sync_bm25(self, meta: IndexMeta | None = None, rebuild: bool = False) -> SyncReport:
        """Bring the on-disk BM25 index (storage/bm25.py) to the committed generation; the caller holds the lock.

        ``rebuild`` (compaction) drops its deleted documents too, so its statistics are the live chunks' again.
        """
        meta = meta if meta is not None else self.meta()
        report = DiskBM25(self.root).sync(meta.generation, lambda: self.manifest(meta), self.read_chunks,
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
        kill_point("mid-shard")
        with atomic_path(cpath) as tmp:
            pq.write_table(chunks.cast(CHUNK_SCHEMA), tmp)
        kill_point("after-shard")
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
        rebuild_bm25: bool = False,
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
        kill_point("after-manifest")
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
        write_json_atomic(
            self.root / INDEX_FILE, meta.to_json(), before_replace=lambda: kill_point("before-index-json")
        )
        kill_point("after-index-json")
        # Shards of this writer that are still being written or wait for their commit (parallel batches on
        # Dask workers) are newer than its lock: spare them; the shards this commit dropped go now.
        self.collect_garbage(meta, spare_since=self._lock_since())
        if old is not None:
            live = {s.name for s in meta.shards}
            for s in old.shards:
                if s.name not in live:
                    for p in self.shard_paths(s.name):
                        p.unlink(missing_ok=True)
        # The BM25 index follows in its own (tantivy) commit. A crash before it leaves that index one generation
        # behind, which readers detect (they then build BM25 in memory) and the next commit or index run repairs.
        self.sync_bm25(meta, rebuild=rebuild_bm25)
        kill_point("after-bm25")
        return meta

    def _lock_since(self) -> float | None:
        """When the current writer took the lock (None without a readable lock)."""
        try:
            return float(json.loads((self.root / LOCK_FILE).read_text())["since"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def collect_garbage(self, meta: IndexMeta | None = None, spare_since: float | None = None) -> list[Path]:
        """Delete files no committed generation references (old manifests, orphan shards, temp files).

        ``spare_since``: keep unreferenced files under ``shards/`` modified after this time.
        """
        meta = meta if meta is not None else self.meta()
        keep = {INDEX_FILE, LOCK_FILE, meta.manifest}
        keep_shards = {n for s in meta.shards for n in (f"{s.name}.safetensors", f"{s.name}.chunks.parquet")}
        removed: list[Path] = []
        if spare_since is None:
            remove_orphan_tmp(self.root)
        else:
            for p in self.root.glob(f"{TMP_MARK}*"):
                p.unlink(missing_ok=True)
        for p in self.root.glob("manifest-*.parquet"):
            if p.name not in keep:
                p.unlink(missing_ok=True)
                removed.append(p)
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
                    removed.append(p)
        return removed

    # ---------------------------------------------------------------- checking
    def verify(self) -> list[str]:
        """Every problem of the committed generation, each naming its file (empty: the store is healthy)."""
        return self.check().problems

    def check(self) -> VerifyReport:
        """Check the committed generation end to end (see :meth:`verify`), with counts for a report.

        Every shard listed in ``index.json`` exists with the recorded sha256, its safetensors header and
        chunk Parquet are readable and hold ``rows × dim`` float32 rows; the manifest is readable; each
        manifest document's ``n_chunks`` equals its live rows, which are its chunk indices 0..n-1 exactly
        once; no chunk id is live twice; the live row count equals ``live_rows``; live rows have unit norm
        within 1e-3. Files no generation references are listed as orphans, not problems. Readers take no
        lock: if a writer commits (and deletes replaced files) while the check runs, it is redone on the new
        generation.
        """
        for _ in range(3):
            rep = self._check_once()
            try:
                if rep.ok or self.meta().generation == rep.generation:
                    return rep
            except StoreError:
                return rep
        return rep

    def _check_once(self) -> VerifyReport:
        t0 = time.perf_counter()
        rep = VerifyReport(store=str(self.root))
        problems = rep.problems
        index_path = self.root / INDEX_FILE
        try:
            meta = self.meta()
        except StoreError as exc:
            problems.append(str(exc))
            return rep
        rep.generation, rep.shards = meta.generation, len(meta.shards)
        manifest: pa.Table | None = None
        mpath = self.root / meta.manifest if meta.manifest else None
        if mpath is None:
            if meta.shards:
                problems.append(f"{index_path}: lists {len(meta.shards)} shards but no manifest")
        elif not mpath.exists():
            problems.append(f"{mpath}: manifest missing (named in {index_path})")
        else:
            try:
                manifest = pq.read_table(mpath, schema=MANIFEST_SCHEMA)
            except (OSError, pa.ArrowException) as exc:
                problems.append(f"{mpath}: unreadable manifest ({exc})")
        docs: dict[str, dict[str, Any]] = {}
        if manifest is not None:
            for row in manifest.to_pylist():
                if row["doc_id"] in docs:
                    problems.append(f"{mpath}: document {row['doc_id']!r} is listed twice")
                docs[row["doc_id"]] = row
                if row["embedder"] != meta.embedder.get("id"):
                    problems.append(
                        f"{mpath}: document {row['doc_id']!r} was embedded by {str(row['embedder'])[:12]}, "
                        f"not by the index's embedder {str(meta.embedder.get('id'))[:12]}"
                    )
            rep.documents = len(docs)
            if meta.documents != len(docs):
                problems.append(f"{index_path}: documents {meta.documents}, but the manifest lists {len(docs)}")
        keys = live_keys(manifest) if manifest is not None else set()
        names = [s.name for s in meta.shards]
        for name, count in Counter(names).items():
            if count > 1:
                problems.append(f"{index_path}: shard {name} is listed {count} times")

        live_per_doc: dict[str, list[int]] = {}  # doc id -> live chunk indices
        live_chunk_ids: dict[str, list[str]] = {}  # chunk id -> shards where it is live
        unreadable_shards: set[str] = set()
        live_total = 0
        for info in meta.shards:
            rep.total_rows += info.rows
            emb, chunks = self._check_shard(info, meta, problems)
            if emb is None or chunks is None:
                unreadable_shards.add(info.name)
                continue
            if manifest is None:
                continue
            mask = live_mask(chunks, info.name, keys)
            live = [i for i, m in enumerate(mask) if m]
            live_total += len(live)
            ids, doc_ids = chunks["chunk_id"].to_pylist(), chunks["doc_id"].to_pylist()
            indices = chunks["chunk_index"].to_pylist()
            for i in live:
                live_per_doc.setdefault(doc_ids[i], []).append(indices[i])
                live_chunk_ids.setdefault(ids[i], []).append(info.name)
            if live:
                norms = emb[torch.tensor(live)].norm(dim=1)
                off = (norms - 1).abs()
                bad = torch.nonzero(~(off <= NORM_TOLERANCE)).flatten().tolist()  # NaN counts as bad
                if bad:
                    worst = bad[int(torch.argmax(torch.nan_to_num(off[bad], nan=math.inf)))]
                    row = live[worst]
                    problems.append(
                        f"{self.shard_paths(info.name)[0]}: {len(bad)} live rows do not have unit norm within "
                        f"{NORM_TOLERANCE} (row {row}, chunk {ids[row]!r}: norm {float(norms[worst]):.6f})"
                    )
        rep.live_rows = live_total
        if manifest is not None:
            listed = set(names)
            for doc_id, row in docs.items():
                n = int(row["n_chunks"])
                if row["shard"] not in listed:
                    if n:
                        problems.append(
                            f"{mpath}: document {doc_id!r} points at shard {row['shard']}, which {index_path} "
                            "does not list"
                        )
                    continue
                if row["shard"] in unreadable_shards:
                    continue  # already reported; its rows cannot be counted
                got = sorted(live_per_doc.get(doc_id, []))
                if len(got) != n:
                    problems.append(
                        f"{mpath}: document {doc_id!r} has n_chunks {n} but {len(got)} live rows "
                        f"in shard {row['shard']}"
                    )
                elif got != list(range(n)):
                    problems.append(
                        f"{mpath}: document {doc_id!r}: live chunk indices {got[:10]} are not 0..{n - 1} "
                        f"(shard {row['shard']})"
                    )
            for chunk_id, where in live_chunk_ids.items():
                if len(where) > 1:
                    problems.append(
                        f"{self.shard_paths(where[-1])[1]}: chunk id {chunk_id!r} is live {len(where)} times "
                        f"(shards {', '.join(where)})"
                    )
            if not unreadable_shards and live_total != meta.live_rows:
                problems.append(f"{index_path}: live_rows {meta.live_rows}, but {live_total} rows are live")
        if meta.total_rows != sum(s.rows for s in meta.shards):
            problems.append(
                f"{index_path}: total_rows {meta.total_rows}, but its shards hold {sum(s.rows for s in meta.shards)}"
            )
        bm25_gen, bm25_chunks = DiskBM25(self.root).state()
        if bm25_gen is None:
            rep.bm25 = "absent (searches build BM25 in memory; the next index run writes it)"
        elif bm25_gen != meta.generation:
            rep.bm25 = (f"at generation {bm25_gen}, behind the store's {meta.generation} (searches build BM25 in "
                        "memory; the next index run brings it up to date)")
        else:
            rep.bm25 = f"in step at generation {bm25_gen}, {bm25_chunks} chunks"
            if bm25_chunks != meta.live_rows:
                problems.append(f"{DiskBM25(self.root).dir}: holds {bm25_chunks} chunks at generation {bm25_gen}, "
                                f"the store {meta.live_rows} live rows")
        rep.orphans = [str(p) for p in self._unreferenced(meta)]
        rep.seconds = time.perf_counter() - t0
        return rep

    def _check_shard(
        self, info: ShardInfo, meta: IndexMeta, problems: list[str]
    ) -> tuple[torch.Tensor | None, pa.Table | None]:
        """Check one shard's two files against ``index.json``; return what could be read."""
        tpath, cpath = self.shard_paths(info.name)
        if info.dim != meta.dim:
            problems.append(f"{self.root / INDEX_FILE}: shard {info.name} has dim {info.dim}, the index {meta.dim}")
        for p, want in ((tpath, info.sha256), (cpath, info.chunks_sha256)):
            if not p.exists():
                problems.append(f"{p}: missing (listed in {INDEX_FILE})")
            else:
                got = sha256_file(p)
                if got != want:
                    problems.append(
                        f"{p}: sha256 mismatch ({INDEX_FILE} says {want[:12]}…, the file ({p.stat().st_size} bytes) "
                        f"has {got[:12]}…): changed or truncated since it was committed"
                    )
        emb = chunks = None
        if tpath.exists():
            try:
                header, n, size = read_safetensors_header(tpath)
                entry = header.get("embeddings")
                if not isinstance(entry, dict):
                    raise ValueError("no 'embeddings' tensor in the header")
                if entry.get("dtype") != "F32" or entry.get("shape") != [info.rows, info.dim]:
                    raise ValueError(
                        f"header says {entry.get('dtype')} {entry.get('shape')}, {INDEX_FILE} says "
                        f"F32 [{info.rows}, {info.dim}]"
                    )
                end = (entry.get("data_offsets") or [0, 0])[1]
                if 8 + n + end != size:
                    raise ValueError(f"the header needs {8 + n + end} bytes, the file has {size} (truncated?)")
                emb = load_file(tpath)["embeddings"]
            except Exception as exc:  # noqa: BLE001 - safetensors raises several types on corrupt input
                problems.append(f"{tpath}: unreadable safetensors ({exc})")
                emb = None
        if cpath.exists():
            try:
                chunks = pq.read_table(cpath, schema=CHUNK_SCHEMA)
            except (OSError, pa.ArrowException) as exc:
                problems.append(f"{cpath}: unreadable Parquet ({exc})")
            else:
                if chunks.num_rows != info.rows:
                    problems.append(f"{cpath}: {chunks.num_rows} chunk rows, {INDEX_FILE} says {info.rows}")
                    chunks = None
        if emb is not None and chunks is not None and emb.shape[0] != chunks.num_rows:
            problems.append(f"{tpath}: {emb.shape[0]} embedding rows for {chunks.num_rows} chunk rows in {cpath}")
            return None, None
        return emb, chunks

    def _unreferenced(self, meta: IndexMeta) -> list[Path]:
        keep = {INDEX_FILE, meta.manifest}
        keep_shards = {n for s in meta.shards for n in (f"{s.name}.safetensors", f"{s.name}.chunks.parquet")}
        out = [p for p in self.root.glob("manifest-*.parquet") if p.name not in keep]
        out += [p for p in self.root.glob(f"{TMP_MARK}*")]
        if self.shard_dir.exists():
            out += [p for p in self.shard_dir.iterdir() if p.is_file() and p.name not in keep_shards]
        return sorted(out)

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
            return self._compact(min_dead_ratio, shard_rows)
        with self.lock(wait_s=lock_wait_s):
            return self._compact(min_dead_ratio, shard_rows)

    def _compact(self, min_dead_ratio: float, shard_rows: int) -> CompactReport:
        t0 = time.perf_counter()
        meta = self.meta()
        manifest = self.manifest(meta)
        rep = CompactReport(store=str(self.root), generation=meta.generation, shards_before=len(meta.shards),
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
        by_doc = {r["doc_id"]: r for r in manifest.to_pylist()}
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
                writes.append(self.write_shard(emb, chunks, [by_doc[d] for _, _, d in pending]))
                rep.rows_copied += int(emb.shape[0])
            pending, pending_rows = [], 0

        moved: set[str] = set()
        for info in selected:
            emb, chunks = self.read_shard(info, check_sha=True)
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
                if n != int(by_doc[doc_id]["n_chunks"]):
                    raise StoreError(
                        f"{self.shard_paths(info.name)[1]}: document {doc_id!r} has {n} live rows but "
                        f"n_chunks {by_doc[doc_id]['n_chunks']} in the manifest; run `ragbatch verify --store "
                        f"{self.root}`"
                    )
                if pending and pending_rows + n > shard_rows:
                    flush()
                pending.append((emb_live[at : at + n], chunks_live.slice(at, n), doc_id))
                pending_rows += n
                at += n
                moved.add(doc_id)
        flush()
        # Documents pointing at a compacted shard with no rows there (n_chunks 0) follow it to the new shard.
        empty_docs = [d for d, r in by_doc.items() if r["shard"] in names and d not in moved]
        if empty_docs and writes:
            writes[0].manifest_rows += [dict(by_doc[d], shard=writes[0].info.name) for d in empty_docs]
        sizes = sum(p.stat().st_size for s in selected for p in self.shard_paths(s.name) if p.exists())
        new = self.commit(meta.embedder, meta.dim, writes, drop_shards=names, rebuild_bm25=True)
        rep.bytes_freed = sizes - sum(p.stat().st_size for w in writes for p in self.shard_paths(w.info.name))
        rep.compacted = [s.name for s in selected]
        rep.written = [w.info.name for w in writes]
        rep.generation, rep.shards_after, rep.dead_ratio_after = new.generation, len(new.shards), new.dead_ratio
        rep.seconds = time.perf_counter() - t0
        return rep

    # ---------------------------------------------------------------- locking
    def lock(self, wait_s: float = 0.0) -> StoreLock:
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"{self.root} is a file, not a store (--store names a folder, new or existing)")
        return StoreLock(self.root / LOCK_FILE, wait_s=wait_s)


class StoreLock:
    """An exclusive writer lock: a file created with O_EXCL holding the owner's pid and host.

    A lock left by a dead process on this host is taken over, and so is a lock file that is empty or
    unreadable (a writer killed between creating and writing it) once it is ``EMPTY_LOCK_STALE_S`` old
    by mtime. Take-overs happen under an ``flock`` on ``.lock.guard`` and re-read the lock there, so
    two writers finding the same stale lock cannot both take it. A lock held by a live process (or
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
                if self._remove_if_stale():
                    continue
                if time.monotonic() >= deadline:
                    raise StoreError(self._locked_message()) from None
                time.sleep(0.2)
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
                fh.flush()
                os.fsync(fh.fileno())
            self.held = True
            return self

    def __exit__(self, *exc: object) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def _remove_if_stale(self) -> bool:
        """Remove the lock file if its holder is gone; True when there is no lock file any more."""
        guard = self.path.with_name(LOCK_GUARD_FILE)
        with open(guard, "a") as gh:
            fcntl.flock(gh.fileno(), fcntl.LOCK_EX)
            try:
                try:
                    holder, age = self._holder(), time.time() - self.path.stat().st_mtime
                except FileNotFoundError:
                    return True
                if holder is not None:
                    stale = self._is_stale(holder)
                else:
                    stale = age > EMPTY_LOCK_STALE_S
                if stale:
                    self.path.unlink(missing_ok=True)
                return stale
            finally:
                fcntl.flock(gh.fileno(), fcntl.LOCK_UN)

    def _locked_message(self) -> str:
        holder = self._holder()
        if holder is not None:
            who = f"pid {holder.get('pid')} on {holder.get('host')}"
            if holder.get("since"):
                who += f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(float(holder['since'])))}"
        else:
            who = "an unknown process"
            with contextlib.suppress(OSError):
                age = time.time() - self.path.stat().st_mtime
                who += (
                    f" (the lock file is empty or unreadable, {age:.0f}s old; it counts as stale after "
                    f"{EMPTY_LOCK_STALE_S:.0f}s)"
                )
        return (
            f"store {self.path.parent} is locked by {who} (another index run is writing it); "
            f"wait for it to finish (--wait SECONDS), or remove {self.path} if that process is gone"
        )

    def _holder(self) -> dict[str, Any] | None:
        try:
            obj = json.loads(self.path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return obj if isinstance(obj, dict) and "pid" in obj else None

    @staticmethod
    def _is_stale(holder: dict[str, Any]) -> bool:
        if holder.get("host") != socket.gethostname():
            return False
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, KeyError, ValueError, TypeError, OverflowError):
            return False
        return False
