"""Checking a store end to end (``ragbatch verify``): the same checks for a local folder and an object store.

Every file is read through the store's hooks (:meth:`Store.read_bytes`, :meth:`Store.loc`), once, so the
checks and their messages are the same on both backends; each problem names the file (a path or a URL).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load as load_bytes

from storage.store.bm25 import DiskBM25
from storage.store.meta import (
    INDEX_FILE,
    NORM_TOLERANCE,
    IndexMeta,
    ShardInfo,
    StoreError,
    VerifyReport,
    live_keys,
    live_mask,
)
from storage.store.schema import MANIFEST_SCHEMA, read_chunk_table, shard_rel

if TYPE_CHECKING:
    from storage.store.base import Store


def check_once(store: Store) -> VerifyReport:
    """One pass of :meth:`Store.verify` over the committed generation (through the store's byte-level hooks):
    each check below appends the problems it finds, naming the file."""
    t0 = time.perf_counter()
    rep = VerifyReport(store=str(store.root))
    try:
        meta = store.meta()
    except StoreError as exc:
        rep.problems.append(str(exc))
        return rep
    rep.generation, rep.shards = meta.generation, len(meta.shards)
    c = _Check(store, meta, rep.problems)
    manifest = _read_manifest(c)
    docs = _check_documents(c, manifest) if manifest is not None else {}
    rep.documents = len(docs)
    _check_shard_list(c)
    live = _scan_shards(c, manifest, rep)
    if manifest is not None:
        _check_live_rows(c, docs, live)
    _check_totals(c)
    rep.bm25 = _check_bm25(c)
    rep.orphans = store.unreferenced(meta)
    rep.seconds = time.perf_counter() - t0
    return rep


@dataclass
class _Check:
    """What every check reads: the store, its committed metadata, and the problems found so far."""

    store: Store
    meta: IndexMeta
    problems: list[str]

    @property
    def index_path(self) -> str:
        return self.store.loc(INDEX_FILE)

    @property
    def manifest_path(self) -> str:
        return self.store.loc(self.meta.manifest) if self.meta.manifest else ""


@dataclass
class _Live:
    """The live rows the shards hold: per document its chunk indices, per chunk id the shards it is live in."""

    per_doc: dict[str, list[int]] = field(default_factory=dict)
    chunk_shards: dict[str, list[str]] = field(default_factory=dict)
    unreadable: set[str] = field(default_factory=set)
    total: int = 0


def _read_manifest(c: _Check) -> pa.Table | None:
    """The manifest ``index.json`` names, or None (with the problem) when it is missing, unreadable or not one."""
    meta, mpath = c.meta, c.manifest_path
    if not meta.manifest:
        if meta.shards:
            c.problems.append(f"{c.index_path}: lists {len(meta.shards)} shards but no manifest")
        return None
    try:
        manifest = pq.read_table(pa.BufferReader(c.store.read_bytes(meta.manifest)), schema=MANIFEST_SCHEMA)
    except FileNotFoundError:
        c.problems.append(f"{mpath}: manifest missing (named in {c.index_path})")
        return None
    except (OSError, pa.ArrowException) as exc:
        c.problems.append(f"{mpath}: unreadable manifest ({exc})")
        return None
    if bad := _null_required(manifest):
        # e.g. another Parquet file written over the manifest: its rows cannot be checked, only reported
        c.problems.append(f"{mpath}: not a manifest of this store: {bad} (overwritten by another file?)")
        return None
    return manifest


def _check_documents(c: _Check, manifest: pa.Table) -> dict[str, dict[str, Any]]:
    """Each document listed once, embedded by the index's embedder, and as many as ``index.json`` counts."""
    docs: dict[str, dict[str, Any]] = {}
    for row in manifest.to_pylist():
        if row["doc_id"] in docs:
            c.problems.append(f"{c.manifest_path}: document {row['doc_id']!r} is listed twice")
        docs[row["doc_id"]] = row
        if row["embedder"] != c.meta.embedder.get("id"):
            c.problems.append(
                f"{c.manifest_path}: document {row['doc_id']!r} was embedded by {str(row['embedder'])[:12]}, "
                f"not by the index's embedder {str(c.meta.embedder.get('id'))[:12]}"
            )
    if c.meta.documents != len(docs):
        c.problems.append(f"{c.index_path}: documents {c.meta.documents}, but the manifest lists {len(docs)}")
    return docs


def _check_shard_list(c: _Check) -> None:
    for name, count in Counter(s.name for s in c.meta.shards).items():
        if count > 1:
            c.problems.append(f"{c.index_path}: shard {name} is listed {count} times")


def _scan_shards(c: _Check, manifest: pa.Table | None, rep: VerifyReport) -> _Live:
    """Every shard checked (check_shard); of the readable ones, the live rows counted and their norms checked."""
    keys = live_keys(manifest) if manifest is not None else set()
    live = _Live()
    for info in c.meta.shards:
        rep.total_rows += info.rows
        emb, chunks = check_shard(c.store, info, c.meta, c.problems)
        if emb is None or chunks is None:
            live.unreadable.add(info.name)
            continue
        if manifest is None:
            continue
        rows = [i for i, m in enumerate(live_mask(chunks, info.name, keys)) if m]
        live.total += len(rows)
        ids, doc_ids = chunks["chunk_id"].to_pylist(), chunks["doc_id"].to_pylist()
        indices = chunks["chunk_index"].to_pylist()
        for i in rows:
            live.per_doc.setdefault(doc_ids[i], []).append(indices[i])
            live.chunk_shards.setdefault(ids[i], []).append(info.name)
        if rows:
            _check_norms(c, info, emb, rows, ids)
    rep.live_rows = live.total
    rep.damaged_shards = sorted(live.unreadable)
    return live


def _check_norms(c: _Check, info: ShardInfo, emb: torch.Tensor, rows: list[int], ids: list[str]) -> None:
    norms = emb[torch.tensor(rows)].norm(dim=1)
    off = (norms - 1).abs()
    bad = torch.nonzero(~(off <= NORM_TOLERANCE)).flatten().tolist()  # NaN counts as bad
    if bad:
        worst = bad[int(torch.argmax(torch.nan_to_num(off[bad], nan=math.inf)))]
        row = rows[worst]
        c.problems.append(
            f"{c.store.loc(shard_rel(info.name)[0])}: {len(bad)} live rows do not have unit norm within "
            f"{NORM_TOLERANCE} (row {row}, chunk {ids[row]!r}: norm {float(norms[worst]):.6f})"
        )


def _check_live_rows(c: _Check, docs: dict[str, dict[str, Any]], live: _Live) -> None:
    """Each document's live rows are its chunks 0..n-1 exactly once, no chunk id is live twice, and the live
    rows add up to ``index.json``'s count."""
    listed, mpath = {s.name for s in c.meta.shards}, c.manifest_path
    for doc_id, row in docs.items():
        n = int(row["n_chunks"])
        if row["shard"] not in listed:
            if n:
                c.problems.append(f"{mpath}: document {doc_id!r} points at shard {row['shard']}, which "
                                  f"{c.index_path} does not list")
            continue
        if row["shard"] in live.unreadable:
            continue  # already reported; its rows cannot be counted
        got = sorted(live.per_doc.get(doc_id, []))
        if len(got) != n:
            c.problems.append(f"{mpath}: document {doc_id!r} has n_chunks {n} but {len(got)} live rows "
                              f"in shard {row['shard']}")
        elif got != list(range(n)):
            c.problems.append(f"{mpath}: document {doc_id!r}: live chunk indices {got[:10]} are not 0..{n - 1} "
                              f"(shard {row['shard']})")
    for chunk_id, where in live.chunk_shards.items():
        if len(where) > 1:
            c.problems.append(f"{c.store.loc(shard_rel(where[-1])[1])}: chunk id {chunk_id!r} is live "
                              f"{len(where)} times (shards {', '.join(where)})")
    if not live.unreadable and live.total != c.meta.live_rows:
        c.problems.append(f"{c.index_path}: live_rows {c.meta.live_rows}, but {live.total} rows are live")


def _check_totals(c: _Check) -> None:
    held = sum(s.rows for s in c.meta.shards)
    if c.meta.total_rows != held:
        c.problems.append(f"{c.index_path}: total_rows {c.meta.total_rows}, but its shards hold {held}")


def _check_bm25(c: _Check) -> str:
    """The BM25 index's state, for the report; a problem only when it claims this generation with other rows."""
    bm25 = DiskBM25(c.store.bm25_root())
    gen, n_chunks = bm25.state()
    if gen is None:
        return "absent (searches build BM25 in memory; the next index run writes it)"
    if gen != c.meta.generation:
        return (f"at generation {gen}, behind the store's {c.meta.generation} (searches build BM25 in memory; "
                "the next index run brings it up to date)")
    if n_chunks != c.meta.live_rows:
        c.problems.append(f"{bm25.dir}: holds {n_chunks} chunks at generation {gen}, the store "
                          f"{c.meta.live_rows} live rows")
    return f"in step at generation {gen}, {n_chunks} chunks"


def check_shard(
    store: Store, info: ShardInfo, meta: IndexMeta, problems: list[str]
) -> tuple[torch.Tensor | None, pa.Table | None]:
    """Check one shard's two files against ``index.json``; return what could be read.

    Each file is read once (a local file or one GET) and hashed, its header checked and parsed from those bytes.
    """
    trel, crel = shard_rel(info.name)
    tpath, cpath = store.loc(trel), store.loc(crel)
    if info.dim != meta.dim:
        problems.append(f"{store.loc(INDEX_FILE)}: shard {info.name} has dim {info.dim}, the index {meta.dim}")
    blobs: dict[str, bytes | None] = {}
    for rel, p, want in ((trel, tpath, info.sha256), (crel, cpath, info.chunks_sha256)):
        try:
            data = blobs[rel] = store.read_bytes(rel)
        except FileNotFoundError:
            problems.append(f"{p}: missing (listed in {INDEX_FILE})")
            blobs[rel] = None
            continue
        got = hashlib.sha256(data).hexdigest()
        if got != want:
            problems.append(
                f"{p}: sha256 mismatch ({INDEX_FILE} says {want[:12]}…, the file ({len(data)} bytes) "
                f"has {got[:12]}…): changed or truncated since it was committed"
            )
    emb = chunks = None
    tdata, cdata = blobs[trel], blobs[crel]
    if tdata is not None:
        try:
            header, n, size = safetensors_header(tdata)
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
            emb = load_bytes(tdata)["embeddings"]
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types on corrupt input
            problems.append(f"{tpath}: unreadable safetensors ({exc})")
            emb = None
    if cdata is not None:
        try:
            chunks = read_chunk_table(pa.BufferReader(cdata))
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


def safetensors_header(data: bytes) -> tuple[dict[str, Any], int, int]:
    """The JSON header of a safetensors file's bytes, its length and the file size."""
    size = len(data)
    if size < 8:
        raise ValueError(f"{size} bytes, too short for a safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n > size - 8:
        raise ValueError(f"header length {n} exceeds the file size {size} (truncated?)")
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    return header, n, size


MANIFEST_REQUIRED = ("doc_id", "sha256", "n_chunks", "shard", "embedder")


def _null_required(manifest: pa.Table) -> str:
    """Which of the manifest's required columns hold nulls ("" when none): the later checks read them all."""
    nulls = [f"{c} is null in {manifest[c].null_count} of {manifest.num_rows} rows" for c in MANIFEST_REQUIRED
             if c in manifest.column_names and manifest[c].null_count]
    return "; ".join(nulls)
