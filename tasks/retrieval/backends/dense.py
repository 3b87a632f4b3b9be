"""Exact dense search: every live row scored by a matmul, the top k kept exactly, ties broken by lowest row.

A float32 matrix is scored by the kernel measured fastest on this machine (tasks/retrieval/backends/kernels.py),
bfloat16 ones included, and the rows near each query's cut-off are rescored exactly
(tasks/retrieval/backends/rescore.py), so every kernel gives the same result. A matrix held in float16,
bfloat16 or int8 (``--matrix-dtype``, to save memory) has no float32 rows to rescore from: it is searched as
it is, by the per-tile ``topk`` below.

The rows are held in a few large matrices (tasks/retrieval/loaded_index.py packs the store's shards into them at
load), so a
small index is one matmul and one ``topk`` per query batch; a large one is scored in tiles of rows whose score
block stays bounded, and the tiles' top-k lists are merged exactly.

Why the per-call work is small (benchmarks/search.py, benchmarks/RESULTS.md): tie handling looks only at the
``k + 1`` best scores of each query, never at the whole score row, and the exact path (a stable sort of the
rows scoring at least the k-th) runs only for queries that do tie; with one tile there is nothing to merge.
"""

from __future__ import annotations

import torch

from tasks.retrieval.backends.base import Hits, QueryKind, empty_hits
from tasks.retrieval.backends.rescore import (
    KERNELS,
    TILE_SCORES,
    Candidates,
    Kernel,
    RowNorms,
    error_bound,
    rank,
    select_first,
    select_tile,
)
from tasks.retrieval.backends.rescore import (
    threshold as threshold_for,
)

# Most scores held at once per tile (query batch x tile rows). Measured on 2 Zen 4 cores (benchmarks/RESULTS.md):
# 16M float32 scores (64 MiB) beat 1M and 4M (more, smaller calls) and 64M (page faults of a fresh block).
CPU_TILE_SCORES = 1 << 24
GPU_TILE_SCORES = 1 << 28  # a GPU wants few, large launches
INT8_TILE_ROWS = 65536  # int8 rows are dequantized at most this many at a time, so the float copy stays small


class ScoringCopy:
    """The float32 matrices as one kernel multiplies them (the same tensors for a float32 kernel), and the row
    norms its error bound needs (for the kernel's copy and for the float32 rows the rescoring reads)."""

    def __init__(self, kernel: Kernel, blocks: list[torch.Tensor]):
        self.kernel = kernel
        same = kernel.dtype == torch.float32
        self.blocks = blocks if same else [b.to(kernel.dtype) for b in blocks]
        self.norms = RowNorms.of(blocks, self.blocks)
        self.fp32_norms = self.norms if same else RowNorms.of(blocks, blocks)


class ExactDense:
    """Exact top-k by inner product (cosine: rows and queries are unit vectors) over row blocks.

    ``blocks[i]`` holds global rows ``offsets[i]:offsets[i] + len(blocks[i])``; ``scales[i]`` is the per-row
    scale of an int8 block (None for a float block). ``scoring`` (float32 blocks only) scores with its kernel
    and rescores exactly; without it the blocks are searched as they are held.
    """

    query_kind: QueryKind = "vector"

    def __init__(self, blocks: list[torch.Tensor], scales: list[torch.Tensor | None], offsets: list[int],
                 scoring: ScoringCopy | None = None):
        self.blocks, self.scales, self.offsets, self.scoring = blocks, scales, offsets, scoring

    @property
    def rows(self) -> int:
        return sum(b.shape[0] for b in self.blocks)

    def search(self, queries: torch.Tensor, k: int, query_batch: int | None = None) -> Hits:
        """Top-k rows and scores per query, descending; equal scores in ascending row order, whatever the blocks.

        ``query_batch`` (default: as many queries as fit one tile's scores, at least 1,024) bounds the queries
        per matmul; on a small index one large batch beats several (2,000 queries x 2,517 SQuAD rows: 13,163
        vs 8,831 q/s for two batches of 1,024), since every call pays its threads' start-up.
        """
        nq = queries.shape[0]
        k = min(k, self.rows)
        if k == 0 or nq == 0:
            return empty_hits(nq)
        gpu = self.blocks[0].device.type != "cpu"
        if query_batch is None:
            tile = TILE_SCORES if self.scoring else (GPU_TILE_SCORES if gpu else CPU_TILE_SCORES)
            query_batch = max(1024, tile // self.rows)
        batch = self._rescored_batch if self.scoring else self._search_batch
        out_rows, out_scores = [], []
        for q0 in range(0, nq, query_batch):
            rows, scores = batch(queries[q0 : q0 + query_batch], k)
            out_rows.append(rows)
            out_scores.append(scores)
        if len(out_rows) == 1:
            return Hits(out_rows[0], out_scores[0])
        return Hits(torch.cat(out_rows), torch.cat(out_scores))

    def _rescored_batch(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Score every row with the kernel, keep the rows within its error bound of the cut-off, rank them
        exactly (tasks/retrieval/backends/rescore.py)."""
        assert self.scoring is not None
        kernel, device = self.scoring.kernel, self.blocks[0].device
        q32 = q.to(device, torch.float32)
        qk = q32.to(kernel.dtype)
        bound = error_bound(kernel, q32, qk, self.scoring.norms)
        nq = q.shape[0]
        # Tiles of a multiple of 256 rows: 4,194 rows took twice as long as 4,096 in bfloat16 on AMX.
        tile = max(256, (GPU_TILE_SCORES if device.type != "cpu" else TILE_SCORES) // nq // 256 * 256)
        cands = Candidates.empty(nq, k, device)
        thr = torch.full((nq,), float("-inf"), dtype=torch.float64, device=device)
        for block, off in zip(self.scoring.blocks, self.offsets, strict=True):
            for t0 in range(0, block.shape[0], tile):
                s = kernel.scores(qk, block[t0 : t0 + tile])
                if s.shape[1] >= k and bool(torch.isinf(thr).any()):  # no threshold yet: this tile sets one
                    cands.add(*select_first(s, k, thr, bound, off + t0))
                else:
                    cands.add(*select_tile(s, thr, off + t0))
                thr = threshold_for(bound, cands.top[:, -1])
        fp32 = None if kernel.dtype == torch.float32 else error_bound(KERNELS["float32"], q32, q32,
                                                                      self.scoring.fp32_norms)
        rows, scores = rank(cands, thr, q32, fp32, self._fetch)
        return rows.cpu(), scores.cpu()

    def _fetch(self, rows: torch.Tensor) -> torch.Tensor:
        """The float32 rows with these global numbers."""
        if len(self.blocks) == 1:
            return self.blocks[0].index_select(0, rows)
        out = torch.empty(rows.numel(), self.blocks[0].shape[1], dtype=torch.float32, device=rows.device)
        for block, off in zip(self.blocks, self.offsets, strict=True):
            m = (rows >= off) & (rows < off + block.shape[0])
            if bool(m.any()):
                out[m] = block[rows[m] - off]
        return out

    def _search_batch(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        cand_s, cand_r = [], []
        for block, scale, off in zip(self.blocks, self.scales, self.offsets, strict=True):
            gpu = block.device.type != "cpu"
            tile = max(1, (GPU_TILE_SCORES if gpu else CPU_TILE_SCORES) // q.shape[0])
            if scale is not None:
                tile = min(tile, INT8_TILE_ROWS)
                qb = q.to(block.device, torch.float16 if gpu else torch.float32)
            else:
                qb = q.to(block.device, block.dtype)
            for t0 in range(0, block.shape[0], tile):
                rows = block[t0 : t0 + tile]
                if scale is None:
                    s = qb @ rows.T
                else:  # int8 rows: score = (q . row_int8) x row scale
                    s = (qb @ rows.to(qb.dtype).T) * scale[t0 : t0 + tile]
                vals, idx = top_k_lowest_row(s, k)
                cand_s.append(vals.float().cpu())
                cand_r.append(idx.cpu() + (off + t0))
        if len(cand_s) == 1:
            return cand_r[0], cand_s[0]
        # Tiles are in row order and each list is (score desc, row asc), so a stable sort by score keeps the
        # lowest row first among equal scores: the same order as one sort of every row.
        s_all, r_all = torch.cat(cand_s, 1), torch.cat(cand_r, 1)
        order = torch.sort(s_all, dim=1, descending=True, stable=True).indices[:, :k]
        return r_all.gather(1, order), s_all.gather(1, order)


def top_k_lowest_row(s: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``min(k, columns)`` largest of each row of ``s``, descending, equal values in ascending column order.

    ``topk`` picks arbitrarily among values tied at the cut-off and orders ties arbitrarily. A query whose
    ``k + 1`` best values are all distinct has neither problem; only the others (rare on real embeddings,
    common with duplicate chunks or float16 scores) take the exact path: a stable sort of the columns scoring
    at least its k-th value.
    """
    n = s.shape[1]
    if n <= k:  # every column is in: only the order is needed
        vals, idx = torch.sort(s, dim=1, descending=True, stable=True)
        return vals, idx
    vals, idx = torch.topk(s, k + 1, dim=1)
    tied = (vals[:, 1:] == vals[:, :-1]).any(1)
    vals, idx = vals[:, :k], idx[:, :k]
    if bool(tied.any()):
        for qi in torch.nonzero(tied).flatten().tolist():
            row = s[qi]
            cols = torch.nonzero(row >= vals[qi, k - 1]).flatten()  # ascending
            order = torch.sort(row[cols], descending=True, stable=True).indices[:k]
            vals[qi], idx[qi] = row[cols[order]], cols[order]
    return vals, idx
