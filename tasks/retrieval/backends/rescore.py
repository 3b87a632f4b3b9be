"""Exact top-k from fast, rounded scores: every row scored by a fast kernel, then only the rows that the kernel's
proven error bound cannot rule out are scored exactly, and the exact scores are ranked.

Why: on a CPU with AMX or avx512_bf16 (and on a GPU) a bfloat16 matmul is several times faster than a float32
one, and the score matrix it writes is half the bytes; but its scores are off by up to about 1% of
``‖q‖‖x‖``, enough to swap near-tied rows. Rescoring the few rows near the cut-off makes the result exact, the
way quantized ANN indexes are made exact, here applied to brute force.

**The exact score** of row x for query q is their inner product computed from the float32 vectors in float64
(each product of two float32 values is exact in float64, and the sum of d of them is within
``γ_d(2^-53) ‖q‖‖x‖`` of the true value), rounded to float32. Rows are ranked by it, descending; equal
scores take the lowest row first. Every kernel, float32 ones included, finishes with this one computation, so
all give the same ids, order and scores, whatever the kernel, tiling, batch or CPU.

**The bound** (:func:`error_bound`). A kernel rounds q and x to its format (``q̂``, ``x̂``; bfloat16: unit
roundoff 2^-8, float16: 2^-11, float32 kernels use the vectors as they are), accumulates the d products in
float32 (unit roundoff v = 2^-24) in any order, and stores the sum y in a format of unit roundoff w (bfloat16
output: 2^-8; float32: w = 0). Since ``q·x − q̂·x̂ = (q − q̂)·x + q̂·(x − x̂)`` exactly, Cauchy–Schwarz gives

    |q̂·x̂ − q·x|  ≤ ‖q − q̂‖ ‖x‖ + ‖q̂‖ ‖x − x̂‖
    |y − q̂·x̂|    ≤ γ_d ‖q̂‖ ‖x̂‖,   γ_d = d·v / (1 − d·v)      (Higham, *Accuracy and Stability*, §3.1: any order)
    |a − y|       ≤ w |y| ≤ w' |a|,  w' = w / (1 − w)

so ``|a − q·x| ≤ E + w'|a|`` with ``E = ‖q − q̂‖ X + ‖q̂‖ ΔX + γ_d ‖q̂‖ X̂ + d·2^-126 (‖q‖ + X + 1)``, where X,
X̂ and ΔX are the largest ‖x‖, ‖x̂‖ and ‖x − x̂‖ over the matrix's rows (measured once: :class:`RowNorms`), and the
last term covers inputs and products flushed to zero below float32's normal range. The rounding residuals are
measured rather than bounded by u‖q‖: for unit vectors of dimension 384 in bfloat16 that makes E about 0.0038
instead of the 0.0079 of the textbook ``(2u + u²)‖q‖‖x‖``, and halves the rows to rescore. For float32 kernels E
is ``γ_d ‖q‖ X`` ≈ 2.3e-5.

**The candidates.** Let a_k be a query's k-th largest kernel score. ``a − w'|a|`` grows with a, so the k rows
holding the k largest kernel scores have true scores ≥ ``a_k − w'|a_k| − E``, and so does the k-th largest
true score. A row of the exact top k (after rounding to float32, which moves a score by half an ulp ≤
2^-24‖q‖X, and float64's own error δ) has a true score ≥ that less ``M = (2^-23 + d·2^-52)‖q‖X``, and since
its true score is ≤ ``a + w'|a| + E``, its kernel score satisfies ``a + w'|a| ≥ T = a_k − w'|a_k| − 2E − M``,
that is ``a ≥ T / (1 + w')`` (``T / (1 − w')`` when T < 0): :func:`threshold`. Every row at or above it is
rescored. Scanning tiles in order, a running k-th best of the candidates seen so far is never above the final
a_k, and the threshold grows with a_k, so a threshold taken from it keeps every row the final one keeps.

**Rescoring** a 16-bit kernel's candidates runs in two steps with the same argument: they are first scored in
float32, as a sum of float32 products (E = γ_d‖q‖X, w = 0), and only those that bound cannot rule out are
scored in float64. A float32 kernel's candidates go to float64 directly: its bound leaves as few.

**Per tile** (:func:`select_tile`) each query's maximum is taken first; only queries whose maximum reaches
their threshold are compared column by column, so most of the block is read once, in cache, by the cheapest
reduction there is. The first tile has no threshold yet (:func:`select_first`): the k-th largest maximum of
its groups of columns stands in for its k-th best score, which it never exceeds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

GROUP = 64  # columns reduced to one maximum before they are compared one by one (benchmarks/search.py)
TILE_SCORES = 1 << 22  # scores per tile: 1,024 queries x 4,096 rows of bfloat16 (8 MiB) stays in cache
RESCORE_ROWS = 2048  # candidate rows gathered and rescored at once (float64: 6 MB); fewer calls beat a smaller copy


@dataclass(frozen=True)
class Kernel:
    """A way of scoring all rows fast: the dtype of its copy of the matrix and its rounding."""

    name: str  # "float32", "float32-numpy", "bfloat16" or "float16"
    dtype: torch.dtype  # of the rows and queries it multiplies
    output_unit: float  # w: unit roundoff of the result's format beyond float32 accumulation (0: float32 out)

    def scores(self, q: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``q @ rows.T`` in this kernel's arithmetic (``q`` and ``rows`` already in ``dtype``)."""
        if self.name == "float32-numpy":  # numpy's OpenBLAS: faster than torch's MKL sgemm on some AMD CPUs
            return torch.from_numpy(np.matmul(q.numpy(), rows.numpy().T))
        with _as_bounded():
            return q @ rows.T


@contextlib.contextmanager
def _as_bounded() -> Iterator[None]:
    """Run a matmul with the arithmetic the bound assumes: products accumulated in float32. torch lets a process
    trade that away globally (``set_float32_matmul_precision("high")`` multiplies float32 in bfloat16; CUDA's
    reduced-precision reductions add partial sums in 16 bits), so those settings are held off for the call."""
    precision = torch.get_float32_matmul_precision()
    cuda = torch.backends.cuda.matmul
    reduced = (cuda.allow_bf16_reduced_precision_reduction, cuda.allow_fp16_reduced_precision_reduction)
    try:
        if precision != "highest":
            torch.set_float32_matmul_precision("highest")
        if any(reduced):
            cuda.allow_bf16_reduced_precision_reduction = cuda.allow_fp16_reduced_precision_reduction = False
        yield
    finally:
        if precision != "highest":
            torch.set_float32_matmul_precision(precision)
        if any(reduced):
            cuda.allow_bf16_reduced_precision_reduction, cuda.allow_fp16_reduced_precision_reduction = reduced


KERNELS: dict[str, Kernel] = {
    "float32": Kernel("float32", torch.float32, 0.0),
    "float32-numpy": Kernel("float32-numpy", torch.float32, 0.0),
    "bfloat16": Kernel("bfloat16", torch.bfloat16, 2.0**-8),
    "float16": Kernel("float16", torch.float16, 2.0**-11),
}


@dataclass(frozen=True)
class Bound:
    """Per query, what :func:`threshold` needs: E, M and w' of the module docstring."""

    additive: torch.Tensor  # E, float64 [nq]
    margin: torch.Tensor  # M, float64 [nq]
    relative: float  # w'


def _float32_norm_growth(d: int) -> float:
    """The factor that raises a norm of d terms computed in float32 above the true norm: 1 + float32's worst
    relative error in it, (d + 2)·2^-23."""
    return 1 + (d + 2) * 2.0**-23


def error_bound(kernel: Kernel, q: torch.Tensor, qk: torch.Tensor, norms: RowNorms) -> Bound:
    """The bound on a kernel score of float32 queries ``q`` rounded to ``qk``, against rows with ``norms``."""
    d = q.shape[1]
    grow = _float32_norm_growth(d)
    qn, qkn = (v.norm(dim=1).double() * grow for v in (q, qk.float()))
    dq = (q - qk.float()).norm(dim=1).double() * grow  # q − q̂ is exact in float32: q̂ keeps q's leading bits
    gamma = d * 2.0**-24 / (1 - d * 2.0**-24)
    e = dq * norms.x + qkn * norms.dx + gamma * qkn * norms.xk + d * 2.0**-126 * (qn + norms.x + 1)
    m = qn * norms.x * (2.0**-23 + d * 2.0**-52) + 2.0**-149
    w = kernel.output_unit
    return Bound(e, m, w / (1 - w))


def threshold(bound: Bound, a_k: torch.Tensor) -> torch.Tensor:
    """The lowest kernel score a row of the exact top k can have, given the k-th best kernel score ``a_k``."""
    w = bound.relative
    t = (a_k - w * a_k.abs() if w else a_k) - 2 * bound.additive - bound.margin  # (0 x -inf is nan)
    return torch.where(t >= 0, t / (1 + w), t / (1 - w))


@dataclass(frozen=True)
class RowNorms:
    """The largest ‖x‖, ‖x̂‖ and ‖x − x̂‖ over a matrix's rows (x̂: the rows as a kernel holds them)."""

    x: float
    xk: float
    dx: float

    @classmethod
    def of(cls, blocks: list[torch.Tensor], kernel_blocks: list[torch.Tensor]) -> RowNorms:
        """Measured in float32, 64k rows at a time, and raised by float32's worst relative error in a norm of
        d terms, (d + 2)·2^-23 (``x − x̂`` is exact in float32: x̂ keeps x's leading bits)."""
        x = xk = dx = 0.0
        for b, bk in zip(blocks, kernel_blocks, strict=True):
            for r0 in range(0, b.shape[0], 1 << 16):
                rows, rows_k = b[r0 : r0 + (1 << 16)], bk[r0 : r0 + (1 << 16)].float()
                x = max(x, float(rows.norm(dim=1).max()))
                xk = max(xk, float(rows_k.norm(dim=1).max()))
                dx = max(dx, float((rows - rows_k).norm(dim=1).max()))
        grow = _float32_norm_growth(blocks[0].shape[1]) if blocks else 1.0
        return cls(x * grow, xk * grow, dx * grow)


def exact_scores(q64: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Exact scores [n, w] of float32 ``rows`` [n, w, d] against the float32 queries ``q64`` [n, d] (as float64):
    the products are exact in float64, summed along d, rounded to float32. Elementwise, not a matmul, so a row's
    score does not depend on which rows are scored with it."""
    return rows.to(torch.float64).mul_(q64[:, None, :]).sum(-1).float()


@dataclass
class Candidates:
    """Rows that may be in a query batch's top k, collected tile by tile in row order."""

    nq: int
    k: int
    queries: list[torch.Tensor]
    rows: list[torch.Tensor]
    approx: list[torch.Tensor]
    top: torch.Tensor  # [nq, k] the k largest kernel scores among the candidates so far (float64)

    @classmethod
    def empty(cls, nq: int, k: int, device: torch.device) -> Candidates:
        return cls(nq, k, [], [], [], torch.full((nq, k), float("-inf"), dtype=torch.float64, device=device))

    def add(self, qi: torch.Tensor, rows: torch.Tensor, approx: torch.Tensor) -> None:
        """Candidates in (query, row) order; ``approx`` their kernel scores."""
        if qi.numel() == 0:
            return
        self.queries.append(qi)
        self.rows.append(rows)
        self.approx.append(approx)
        pad, _ = _by_query(qi, approx.double(), self.nq, float("-inf"))
        self.top = torch.topk(torch.cat([self.top, pad], 1), self.k, dim=1).values


def select_tile(s: torch.Tensor, threshold: torch.Tensor, col0: int) -> tuple[torch.Tensor, ...]:
    """The (query, column + col0, kernel score) of every score in ``s`` at or above its query's threshold.

    Each query's maximum over the tile is taken first (one contiguous reduction, the cheapest pass there is).
    Only the queries whose maximum reaches their threshold (after the first tiles, about a tenth) are looked at
    further: the maximum of each group of ``GROUP`` columns, then the columns of the groups that reach it.
    """
    qs = _reaching(_max(s), threshold).nonzero().flatten()
    if qs.numel() == 0:
        empty = torch.empty(0, dtype=torch.long, device=s.device)
        return empty, empty, torch.empty(0, dtype=torch.float64, device=s.device)
    sub, thr = (s.index_select(0, qs), threshold[qs]) if qs.numel() < s.shape[0] else (s, threshold)
    qi, cols, vals = _columns(sub, thr, GROUP, col0)
    return qs[qi], cols, vals


def select_first(s: torch.Tensor, k: int, lower: torch.Tensor, bound: Bound, col0: int) -> tuple[torch.Tensor, ...]:
    """:func:`select_tile` for a tile that sets the first threshold (``s`` has at least k columns).

    The tile's columns are cut into groups (of ``GROUP`` columns, fewer where that leaves under k groups), and
    the k-th largest group maximum stands in for the k-th best score: k groups hold a score at least that high,
    so it is never above the tile's k-th best, nor the final one, and a threshold taken from it keeps every row
    the final one keeps. It costs one reduction and a ``topk`` over the group maxima, where a ``topk`` over the
    whole tile took 17 ms for 1,000 queries x 2,500 rows (Intel AMX: 16x the bfloat16 matmul), and it lets in
    few extra rows: with n groups, about ``-ln(1 - k/n) n/k`` times k scores reach the k-th group maximum
    (1.15 k for n = 4k)."""
    g = max(1, min(GROUP, s.shape[1] // k))
    maxima = _max(_grouped(s, g))
    thr = torch.maximum(lower, threshold(bound, torch.topk(maxima, k, dim=1).values[:, -1]))
    return _columns(s, thr, g, col0, maxima)


def _columns(s: torch.Tensor, thr: torch.Tensor, g: int, col0: int,
             maxima: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """The (row of ``s``, column + col0, score) of the scores ≥ ``thr`` (per row of ``s``), in row then column
    order: the maxima of groups of ``g`` columns (given, or taken here) pick the groups to compare one by one;
    the columns after the last whole group are compared directly."""
    p, t = s.shape
    main = t - t % g
    parts = []
    if main:
        if maxima is None:
            maxima = _max(_grouped(s, g))
        qi, gj = _reaching(maxima, thr[:, None]).nonzero(as_tuple=True)
        vals = _windows(s, g).index_select(0, qi * t + gj * g).float()  # [P, g]: the groups that reach
        pi, ci = (vals >= _float32_at_most(thr)[qi][:, None]).nonzero(as_tuple=True)
        parts.append((qi[pi], gj[pi] * g + ci, vals[pi, ci]))
    if main < t:  # the tail columns, one by one
        tail = s[:, main:].float()
        qi, cj = (tail >= _float32_at_most(thr)[:, None]).nonzero(as_tuple=True)
        parts.append((qi, cj + main, tail[qi, cj]))
    qi, cols, vals = (torch.cat(x) for x in zip(*parts, strict=True)) if len(parts) > 1 else parts[0]
    if len(parts) > 1:  # back to (row, column) order: the tail's columns follow the main part's
        order = torch.sort(qi, stable=True).indices
        qi, cols, vals = qi[order], cols[order], vals[order]
    return qi, cols + col0, vals.double()


def _windows(s: torch.Tensor, g: int) -> torch.Tensor:
    """Every run of ``g`` consecutive scores of a contiguous ``s``, by its flat start (an overlapping view, read
    only): ``index_select`` of a few of them gathers groups 8x faster than advanced indexing of a 3-d view."""
    assert s.is_contiguous()
    return s.view(-1).as_strided((s.numel() - g + 1, g), (1, 1))


def _grouped(s: torch.Tensor, g: int) -> torch.Tensor:
    """The whole groups of ``g`` columns of a row-contiguous ``s`` as a [rows, groups, g] view (no copy, unlike
    a reshape of ``s[:, :main]``)."""
    assert s.stride(1) == 1
    return s.as_strided((s.shape[0], s.shape[1] // g, g), (s.stride(0), g, 1))


def _max(s: torch.Tensor) -> torch.Tensor:
    """float64 maximum over the last dimension. A 16-bit float block is read as int16: twice as fast as a float
    reduction, and exact where the maximum is ≥ 0 (where it is negative the result is ≤ 0: see
    :func:`_reaching`)."""
    if s.dtype in (torch.bfloat16, torch.float16):
        return s.view(torch.int16).amax(-1).view(s.dtype).double()
    return s.amax(-1).double()


def _reaching(maxima: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Which maxima may hide a score ≥ threshold: those ≥ it, and any ≤ 0 while the threshold is not positive
    (an int16-read maximum of negative scores is not their maximum)."""
    return (maxima >= threshold) | ((maxima <= 0) & (threshold <= 0))


def _float32_at_most(t: torch.Tensor) -> torch.Tensor:
    """float64 thresholds rounded down to float32, so that comparing float32 scores keeps every score ≥ t."""
    t32 = t.float()
    return torch.where(t32.double() > t, torch.nextafter(t32, torch.full_like(t32, float("-inf"))), t32)


def rank(cands: Candidates, kernel_threshold: torch.Tensor, q: torch.Tensor, fp32_bound: Bound | None,
         fetch_rows) -> tuple[torch.Tensor, torch.Tensor]:
    """Rescore the candidates at or above ``kernel_threshold``: in float32 first (given ``fp32_bound``; None
    for a float32 kernel, whose candidates are already as few), then those that float32's bound cannot rule out
    in float64. Top k per query by (exact score desc, row asc).

    ``fetch_rows(global_rows)`` returns those rows of the float32 matrix. The candidates are laid out one query
    per row, rows ascending (tiles are scanned in row order), so a stable sort by score alone breaks ties by
    the lowest row, and each query's vector is broadcast over its rows instead of copied to each of them (1.7x
    faster than the flat layout at 2,500 rows, Intel AMX).
    """
    nq, k = cands.nq, cands.k
    if not cands.queries:
        return (torch.full((nq, k), -1, dtype=torch.long, device=q.device),
                torch.full((nq, k), float("-inf"), device=q.device))
    qi, rows, approx = torch.cat(cands.queries), torch.cat(cands.rows), torch.cat(cands.approx)
    keep = approx >= kernel_threshold[qi]
    qi, rows = qi[keep], rows[keep]
    order = torch.sort(qi, stable=True).indices
    pad_r, _ = _by_query(qi[order], rows[order], nq, -1)
    if fp32_bound is not None:
        s32 = _rescored(pad_r, q, fetch_rows, lambda qb, x: x.mul_(qb[:, None, :]).sum(-1))
        a_k = torch.topk(s32, min(k, s32.shape[1]), dim=1).values[:, -1]
        pad_r = _compact(pad_r, s32.double() >= threshold(fp32_bound, a_k)[:, None])
    exact = _rescored(pad_r, q.double(), fetch_rows, exact_scores)
    if exact.shape[1] < k:  # cannot happen while k ≤ rows; kept so the shapes always hold
        exact = torch.cat([exact, exact.new_full((nq, k - exact.shape[1]), float("-inf"))], 1)
        pad_r = torch.cat([pad_r, pad_r.new_full((nq, k - pad_r.shape[1]), -1)], 1)
    best = torch.sort(exact, dim=1, descending=True, stable=True).indices[:, :k]
    return pad_r.gather(1, best), exact.gather(1, best)


def _rescored(pad_r: torch.Tensor, q: torch.Tensor, fetch_rows, score) -> torch.Tensor:
    """``score(q_block, rows [n, w, d]) → [n, w]`` over the padded candidate rows ``pad_r`` (-1: none, scored
    -inf), about ``RESCORE_ROWS`` gathered rows at a time. The queries are taken in order of their candidate
    counts, so each block is about as wide as its queries' rows, not padded to the widest query of all (2x the
    rows on random vectors)."""
    nq, w = pad_r.shape
    out = torch.full((nq, w), float("-inf"), dtype=torch.float32, device=q.device)
    counts = (pad_r >= 0).sum(1)
    by_count = torch.argsort(counts)
    widths = counts[by_count].tolist()
    q0 = 0
    while q0 < nq:
        # widths ascend, and a block holds at most RESCORE_ROWS queries: none is wider than this one
        widest = max(widths[min(q0 + RESCORE_ROWS, nq) - 1], 1)
        per = max(1, RESCORE_ROWS // widest)
        qs = by_count[q0 : q0 + per]
        wb = max(widths[min(q0 + per, nq) - 1], 1)  # the block's widest query: the rest of each row is padding
        r = pad_r.index_select(0, qs)[:, :wb]
        x = fetch_rows(r.clamp(min=0).flatten()).view(r.shape[0], wb, -1)
        out[qs, :wb] = score(q.index_select(0, qs), x).masked_fill_(r < 0, float("-inf"))
        q0 += per
    return out


def _compact(pad_r: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The kept entries of each row of ``pad_r`` moved to its front in their order, -1 after them, as narrow as
    the row with most."""
    keep &= pad_r >= 0
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices[:, : max(int(keep.sum(1).max()), 1)]
    return torch.where(keep.gather(1, order), pad_r.gather(1, order), -1)


def _by_query(qi: torch.Tensor, values: torch.Tensor, nq: int, fill: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Values laid out one query per row, in their order (``qi`` sorted), padded with ``fill``; and positions."""
    counts = torch.bincount(qi, minlength=nq)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(qi.numel(), device=qi.device) - starts[qi]
    pad = torch.full((nq, max(int(counts.max()), 1)), fill, dtype=values.dtype, device=values.device)
    pad[qi, pos] = values
    return pad, pos
