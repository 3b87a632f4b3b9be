"""A loaded store generation: its live chunk rows as matrices on the device, and the backends over them.

``load_dense_index`` reads the committed generation (the live rows only, by the store's own rule,
``storage.store.meta.live_mask``), packs the store's shards into a few large matrices (one below ``PACK_ROWS``
rows), held as float32, float16, bfloat16 or per-row int8. ``open_index`` keeps one loaded generation per
(store, device, dtype) in a locked process cache and reloads it when a writer commits a newer one. The
backends (exact dense, BM25, HNSW) are built from it, the last two on first use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import torch

from storage.store import CHUNK_SCHEMA, Store, StoreError, open_store
from storage.store.meta import live_keys, live_mask
from tasks.cache import ProcessCache
from tasks.config import MATRIX_DTYPES
from tasks.device import default_device
from tasks.indexing.embed import EmbedderConfig, resolve_embedder
from tasks.retrieval.backends.base import Hits
from tasks.retrieval.backends.dense import ExactDense, ScoringCopy
from tasks.retrieval.backends.kernels import SIZE_CLASSES, choose_kernel

PACK_ROWS = 1 << 20  # most rows per matrix: one allocation stays bounded, and a small index is one matmul


@dataclass
class LoadedGeneration:
    """One committed generation of a store, loaded: ``shards[i]`` holds global rows ``offsets[i]:…`` of
    ``chunks``; ``scales[i]`` is the per-row scale of an int8 matrix (None for a float one)."""

    store: Store
    generation: int
    embedder: dict
    shards: list[torch.Tensor]  # live rows only, on the device, packed (not one per store shard)
    offsets: list[int]  # global row offset of each matrix
    chunks: pa.Table  # live chunk rows, in global row order
    scales: list[torch.Tensor | None] = field(default_factory=list)
    _bm25: object = None
    _ann: object = None
    _scoring: ScoringCopy | None = None

    def __post_init__(self) -> None:
        self.scales = self.scales or [None] * len(self.shards)  # None: a float matrix

    @property
    def rows(self) -> int:
        return self.chunks.num_rows

    @property
    def dense(self) -> ExactDense:
        """The exact backend over the matrices as they are now (cheap: it holds references). Float32 matrices
        are scored by the kernel measured fastest here and rescored exactly (tasks/retrieval/backends/kernels.py);
        its copy of the matrices (bfloat16: half their size) is made on first use and kept."""
        float32 = bool(self.shards) and self.shards[0].dtype == torch.float32 and self.scales[0] is None
        if float32 and self._scoring is None and self.rows:
            kernel = choose_kernel(str(self.shards[0].device), self.shards[0][: SIZE_CLASSES[-1]], rows=self.rows)
            self._scoring = ScoringCopy(kernel, self.shards)
        return ExactDense(self.shards, self.scales, self.offsets, self._scoring if float32 else None)

    def search(self, queries: torch.Tensor, k: int, query_batch: int | None = None) -> Hits:
        """Exact top-k by inner product (cosine, rows being unit vectors); ties by lowest row."""
        return self.dense.search(queries, min(k, self.rows), query_batch)

    @property
    def ann(self):
        """A FAISS HNSW index over the same live rows (tasks/retrieval/backends/ann.py), built on first use."""
        if self._ann is None:
            from tasks.retrieval.backends.ann import HNSWIndex

            self._ann = HNSWIndex(self.float_shards(), int(self.embedder.get("dim") or self.shards[0].shape[1]))
        return self._ann

    @property
    def bm25(self):
        """The BM25 index over the same live rows: the store's on-disk one at this generation, opened on first use."""
        if self._bm25 is None:
            from tasks.retrieval.backends.bm25 import open_bm25

            self._bm25 = open_bm25(self.store.bm25_at(self.generation), self.generation, self.chunks)
        return self._bm25

    def float_shards(self) -> list[torch.Tensor]:
        """The matrices as float32 (int8 rows dequantized)."""
        return [dequantize(sh, sc) for sh, sc in zip(self.shards, self.scales, strict=True)]




def quantize_int8(emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: row ≈ q × scale, scale = max|row| / 127 (a quarter of float32's memory)."""
    scale = emb.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    return torch.round(emb / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


def dequantize(shard: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """float32 rows of a float matrix, or of an int8 one with its per-row scales."""
    return shard.float() if scale is None else shard.float() * scale.float()[:, None]


def matrix_dtype_for(device: str, matrix_dtype: str | None) -> str:
    """``auto``: float16 on a GPU (its tensor cores; recall measured in benchmarks/RESULTS.md), else float32."""
    if matrix_dtype in (None, "auto"):
        return "float16" if device.startswith("cuda") else "float32"
    if matrix_dtype not in MATRIX_DTYPES:
        raise ValueError(f"unknown matrix dtype {matrix_dtype!r}; choose one of {', '.join(MATRIX_DTYPES)}")
    return matrix_dtype


class RowPacker:
    """Copies rows, shard after shard, into matrices of at most ``PACK_ROWS`` rows, allocated as they fill.

    Only the expected number of rows is allocated (plus any overflow, which the caller reports), so loading
    holds one store shard in host memory at a time and no second copy of the index.
    """

    def __init__(self, expected_rows: int, device: str, matrix_dtype: str, pack_rows: int = PACK_ROWS):
        self.expected, self.device, self.mdtype, self.pack_rows = expected_rows, device, matrix_dtype, pack_rows
        self.blocks: list[torch.Tensor] = []
        self.scales: list[torch.Tensor | None] = []
        self.offsets: list[int] = []
        self.rows = 0
        self._fill = 0  # rows filled in the last block

    def add(self, emb: torch.Tensor) -> None:
        i = 0
        while i < emb.shape[0]:
            if not self.blocks or self._fill == self.blocks[-1].shape[0]:
                self._new_block(emb.shape[1], max(self.expected - self.rows, emb.shape[0] - i))
            n = min(self.blocks[-1].shape[0] - self._fill, emb.shape[0] - i)
            part, dst = emb[i : i + n], slice(self._fill, self._fill + n)
            if self.mdtype == "int8":
                q8, sc = quantize_int8(part.float())
                self.blocks[-1][dst].copy_(q8)
                self.scales[-1][dst].copy_(sc)  # type: ignore[index]
            else:
                self.blocks[-1][dst].copy_(part)
            i, self._fill, self.rows = i + n, self._fill + n, self.rows + n

    def _new_block(self, dim: int, wanted: int) -> None:
        n = min(self.pack_rows, wanted)
        int8 = self.mdtype == "int8"
        self.blocks.append(torch.empty(n, dim, dtype=torch.int8 if int8 else getattr(torch, self.mdtype),
                                       device=self.device))
        self.scales.append(torch.empty(n, dtype=torch.float32 if self.device == "cpu" else torch.float16,
                                       device=self.device) if int8 else None)
        self.offsets.append(self.rows)
        self._fill = 0

    def matrices(self) -> tuple[list[torch.Tensor], list[torch.Tensor | None], list[int]]:
        """The filled matrices (a last one trimmed to its rows)."""
        if self.blocks and self._fill < self.blocks[-1].shape[0]:
            self.blocks[-1] = self.blocks[-1][: self._fill]
            if self.scales[-1] is not None:
                self.scales[-1] = self.scales[-1][: self._fill]
        return self.blocks, self.scales, self.offsets


def load_dense_index(store: Store, device: str | None = None, check_sha: bool = False,
                     matrix_dtype: str | None = None) -> LoadedGeneration:
    """Read the committed generation: only rows whose document's manifest entry points at them.

    The stored float32 rows are held on the device as ``matrix_dtype`` (see :func:`matrix_dtype_for`).
    """
    meta = store.meta()
    device = device or default_device()
    keys = live_keys(store.manifest(meta))
    packer = RowPacker(meta.live_rows, device, matrix_dtype_for(device, matrix_dtype))
    tables = []
    for info in meta.shards:
        emb, chunks = store.read_shard(info, check_sha=check_sha)
        keep = live_mask(chunks, info.name, keys)
        if not any(keep):
            continue
        packer.add(emb[torch.tensor(keep)])
        tables.append(chunks.filter(pa.array(keep)))
    if packer.rows != meta.live_rows:
        raise StoreError(
            f"store {store.root}: {packer.rows} live chunk rows found but the metadata says {meta.live_rows}; "
            "run `ragbatch verify`"
        )
    chunks = pa.concat_tables(tables) if tables else CHUNK_SCHEMA.empty_table()
    blocks, scales, offsets = packer.matrices()
    return LoadedGeneration(store, meta.generation, meta.embedder, blocks, offsets, chunks, scales)


_INDEX_CACHE: ProcessCache[LoadedGeneration] = ProcessCache()


def clear_index_cache() -> None:
    """Forget every loaded generation of this process (as a fresh process on another machine would start)."""
    _INDEX_CACHE.clear()


def open_index(store: str | Store, device: str | None = None, matrix_dtype: str | None = None) -> LoadedGeneration:
    """A process-level cache of loaded generations, refreshed when the store's generation changes.

    Each generation is loaded once with every shard file's sha256 checked against ``index.json``, so a
    flipped byte or a truncated file is refused with a :class:`StoreError` naming it instead of serving
    garbage. Files are read once and parsed from memory, so the check costs only the hashing (~1.5 GB/s here:
    0.7 ms for the 1.1 MB demo store, whose load takes 5–60 ms). If a writer commits a newer
    generation (and deletes the shards it replaced) while one loads, the load is retried on the new one.
    """
    store = open_store(store)
    device = device or default_device()
    mdtype = matrix_dtype_for(device, matrix_dtype)
    gen = store.meta().generation
    return _INDEX_CACHE.get((str(store.root), device, mdtype), lambda: _load_retrying(store, device, mdtype, gen),
                            fresh=lambda loaded: loaded.generation == gen)


def _load_retrying(store: Store, device: str, mdtype: str, gen: int) -> LoadedGeneration:
    for attempt in range(3):
        try:
            return load_dense_index(store, device, check_sha=True, matrix_dtype=mdtype)
        except StoreError:
            now = store.meta().generation
            if attempt == 2 or now == gen:
                raise
            gen = now
    raise AssertionError("unreachable")  # pragma: no cover


def embedder_for_store(store: str | Store, embedder: str | None = None) -> EmbedderConfig:
    """The store's own embedder by default; another one is refused with both names in the error."""
    store = open_store(store)
    built = store.meta().embedder
    config = resolve_embedder(embedder or built["name"])
    store.check_embedder(config.fingerprint)
    return config
