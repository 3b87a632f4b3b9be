"""The store's metadata types and errors, shared by every backend (POSIX and object storage).

Importable from ``storage.store.base`` as before; they live here so that store.py, verify.py, compact.py and
objstore.py can share them without importing each other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from storage.store.schema import ManifestRow

FORMAT_VERSION = 1
INDEX_FILE = "index.json"
NORM_TOLERANCE = 1e-3
COMPACT_SHARD_ROWS = 65536  # compaction packs live rows into shards of at most this many rows (whole documents)


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
    manifest_rows: list[ManifestRow]  # their shard filled in


@dataclass
class VerifyReport:
    """What :meth:`Store.verify` found: ``problems`` is empty for a healthy store."""

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
    damaged_shards: list[str] = field(default_factory=list)  # missing or corrupt: `index --repair` re-embeds them

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

