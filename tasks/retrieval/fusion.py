"""Reciprocal rank fusion: several rankings of the same rows into one (the hybrid retriever's dense + BM25).

RRF needs only ranks, so lists whose scores are on different scales (cosines, BM25) combine without tuning.
"""

from __future__ import annotations

import torch

from tasks.config import RetrievalConfig


def rrf_fuse(
    rankings: list[torch.Tensor], k: int, rrf_k: int = RetrievalConfig.rrf_k, weights: list[float] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reciprocal rank fusion: score(row) = Σ_i w_i / (rrf_k + rank_i(row)), ranks from 1; -1 rows ignored.

    Ties are broken by the best rank any list gave the row, then by row number. No row appears twice.
    """
    weights = weights or [1.0] * len(rankings)
    nq = rankings[0].shape[0]
    out_rows = torch.full((nq, k), -1, dtype=torch.long)
    out_scores = torch.full((nq, k), float("-inf"))
    lists = [r.tolist() for r in rankings]  # one conversion per list, not one per query
    for qi in range(nq):
        acc: dict[int, float] = {}
        best: dict[int, int] = {}
        for w, ranking in zip(weights, lists, strict=True):
            for rank, row in enumerate(ranking[qi], 1):
                if row < 0 or w == 0:  # a list weighted 0 adds nothing, not even its rows
                    continue
                acc[row] = acc.get(row, 0.0) + w / (rrf_k + rank)
                best[row] = min(best.get(row, rank), rank)
        fused = sorted(acc, key=lambda r: (-acc[r], best[r], r))[:k]
        for j, row in enumerate(fused):
            out_rows[qi, j], out_scores[qi, j] = row, acc[row]
    return out_rows, out_scores
