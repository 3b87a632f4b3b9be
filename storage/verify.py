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
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load as load_bytes

from storage.bm25 import DiskBM25
from storage.meta import (
    INDEX_FILE,
    NORM_TOLERANCE,
    IndexMeta,
    ShardInfo,
    StoreError,
    VerifyReport,
    live_keys,
    live_mask,
)

if TYPE_CHECKING:
    from storage.store import Store


def shard_rel(name: str) -> tuple[str, str]:
    """A shard's two files, relative to the store root."""
    return f"shards/{name}.safetensors", f"shards/{name}.chunks.parquet"


def read_chunk_table(source: object) -> pa.Table:
    """A shard's chunk table from a path or buffer: the one place chunk tables are parsed (schema checks go here)."""
    from storage.store import CHUNK_SCHEMA

    return pq.read_table(source, schema=CHUNK_SCHEMA)


def check_once(store: Store) -> VerifyReport:
    """One pass of :meth:`Store.check` over the committed generation (through the store's byte-level hooks)."""
    from storage.store import MANIFEST_SCHEMA

    t0 = time.perf_counter()
    rep = VerifyReport(store=str(store.root))
    problems = rep.problems
    index_path = store.loc(INDEX_FILE)
    try:
        meta = store.meta()
    except StoreError as exc:
        problems.append(str(exc))
        return rep
    rep.generation, rep.shards = meta.generation, len(meta.shards)
    manifest: pa.Table | None = None
    mpath = store.loc(meta.manifest) if meta.manifest else None
    if mpath is None:
        if meta.shards:
            problems.append(f"{index_path}: lists {len(meta.shards)} shards but no manifest")
    else:
        try:
            manifest = pq.read_table(pa.BufferReader(store.read_bytes(meta.manifest)), schema=MANIFEST_SCHEMA)
        except FileNotFoundError:
            problems.append(f"{mpath}: manifest missing (named in {index_path})")
        except (OSError, pa.ArrowException) as exc:
            problems.append(f"{mpath}: unreadable manifest ({exc})")
        if manifest is not None and (bad := _null_required(manifest)):
            # e.g. another Parquet file written over the manifest: its rows cannot be checked, only reported
            problems.append(f"{mpath}: not a manifest of this store: {bad} (overwritten by another file?)")
            manifest = None
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
        emb, chunks = check_shard(store, info, meta, problems)
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
                    f"{store.loc(shard_rel(info.name)[0])}: {len(bad)} live rows do not have unit norm within "
                    f"{NORM_TOLERANCE} (row {row}, chunk {ids[row]!r}: norm {float(norms[worst]):.6f})"
                )
    rep.live_rows = live_total
    rep.damaged_shards = sorted(unreadable_shards)
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
                    f"{store.loc(shard_rel(where[-1])[1])}: chunk id {chunk_id!r} is live {len(where)} times "
                    f"(shards {', '.join(where)})"
                )
        if not unreadable_shards and live_total != meta.live_rows:
            problems.append(f"{index_path}: live_rows {meta.live_rows}, but {live_total} rows are live")
    if meta.total_rows != sum(s.rows for s in meta.shards):
        problems.append(
            f"{index_path}: total_rows {meta.total_rows}, but its shards hold {sum(s.rows for s in meta.shards)}"
        )
    bm25 = DiskBM25(store.bm25_root())
    bm25_gen, bm25_chunks = bm25.state()
    if bm25_gen is None:
        rep.bm25 = "absent (searches build BM25 in memory; the next index run writes it)"
    elif bm25_gen != meta.generation:
        rep.bm25 = (f"at generation {bm25_gen}, behind the store's {meta.generation} (searches build BM25 in "
                    "memory; the next index run brings it up to date)")
    else:
        rep.bm25 = f"in step at generation {bm25_gen}, {bm25_chunks} chunks"
        if bm25_chunks != meta.live_rows:
            problems.append(f"{bm25.dir}: holds {bm25_chunks} chunks at generation {bm25_gen}, "
                            f"the store {meta.live_rows} live rows")
    rep.orphans = store.unreferenced(meta)
    rep.seconds = time.perf_counter() - t0
    return rep


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
