"""The store's table schemas and their typed rows: chunk tables (one per shard) and the manifest.

Each Arrow schema has its row type beside it; ``tests/test_store.py`` fails when the two drift apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import pyarrow as pa

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
        # Where the chunk is (issue 12); null for formats without pages or rows. Tables written before these
        # columns existed read them as nulls (pq.read_table with this schema), so older stores load and verify.
        ("page_start", pa.int32()),
        ("page_end", pa.int32()),
        ("row", pa.int64()),
        # A chunk that crosses pages: the offsets in its text where pages page_start + 1 … page_end begin, so a
        # citation can name the page of the span it cites (issue 24). Null otherwise, and in older stores.
        ("page_breaks", pa.list_(pa.int32())),
    ]
)


def conform_chunks(chunks: pa.Table) -> pa.Table:
    """``chunks`` cast to CHUNK_SCHEMA; location columns a caller did not fill (issue 12) are added as nulls."""
    for f in CHUNK_SCHEMA:
        if f.name not in chunks.column_names:
            chunks = chunks.append_column(f.name, pa.nulls(chunks.num_rows, f.type))
    return chunks.select(CHUNK_SCHEMA.names).cast(CHUNK_SCHEMA)


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
        ("added_at", pa.int64()),
        ("changed_at", pa.int64()),
    ]
)


@dataclass(frozen=True)
class ManifestRow:
    """One document of the manifest (MANIFEST_SCHEMA, same fields in the same order)."""

    doc_id: str
    path: str
    sha256: str
    size: int
    mtime: float
    n_chunks: int
    shard: str  # "" until the shard holding its chunks is written (Store.write_shard fills it in)
    embedder: str  # the embedder fingerprint id
    chunking: str  # tasks.ingest.chunk.ChunkSettings.key
    status: str
    indexed_at: float
    # The generation whose commit added this doc id, and the one that committed its current content (sha256):
    # ``refresh`` reads from these which documents changed between the generation a table was answered at and
    # now (old manifests are not kept). None in a manifest written before they existed: "unknown".
    added_at: int | None = None
    changed_at: int | None = None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ManifestRow:
        """A row read back from the manifest table (``Table.to_pylist()``)."""
        return cls(**{f.name: record.get(f.name) for f in fields(cls)})

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


def manifest_table(rows: list[ManifestRow]) -> pa.Table:
    return pa.Table.from_pylist([r.to_record() for r in rows], schema=MANIFEST_SCHEMA)


SHARDS_DIR = "shards"


def shard_rel(name: str) -> tuple[str, str]:
    """A shard's two files, relative to the store root: the one place their names are stated."""
    return f"{SHARDS_DIR}/{name}.safetensors", f"{SHARDS_DIR}/{name}.chunks.parquet"


def read_chunk_table(source: object) -> pa.Table:
    """A shard's chunk table from a path or buffer: the one place chunk tables are parsed (schema checks here)."""
    import pyarrow.parquet as pq

    return pq.read_table(source, schema=CHUNK_SCHEMA)
