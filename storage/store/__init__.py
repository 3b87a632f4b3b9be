"""The store: one contract (base.py), a POSIX backend (local.py) and an S3 backend (s3.py), and their files.

``open_store(location)`` gives the right backend; ``Store`` is the contract every caller types against.
"""

from storage.store.base import Store, new_shard_name
from storage.store.lock import EMPTY_LOCK_STALE_S, LOCK_FILE, LOCK_GUARD_FILE, StoreLock
from storage.store.meta import (
    COMPACT_SHARD_ROWS,
    FORMAT_VERSION,
    INDEX_FILE,
    NORM_TOLERANCE,
    CompactReport,
    EmbedderMismatchError,
    IndexMeta,
    ShardInfo,
    ShardWrite,
    StoreError,
    VerifyReport,
    live_keys,
    live_mask,
)
from storage.store.open import open_store
from storage.store.schema import CHUNK_SCHEMA, MANIFEST_SCHEMA, ManifestRow, conform_chunks, shard_rel

__all__ = [
    "CHUNK_SCHEMA", "COMPACT_SHARD_ROWS", "EMPTY_LOCK_STALE_S", "FORMAT_VERSION", "INDEX_FILE", "LOCK_FILE",
    "LOCK_GUARD_FILE", "MANIFEST_SCHEMA", "NORM_TOLERANCE", "CompactReport", "EmbedderMismatchError", "IndexMeta",
    "ManifestRow", "ShardInfo", "ShardWrite", "Store", "StoreError", "StoreLock", "VerifyReport", "conform_chunks",
    "live_keys", "live_mask", "new_shard_name", "open_store", "shard_rel",
]
