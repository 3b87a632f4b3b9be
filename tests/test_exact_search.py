"""Exact search with fast kernels: every scoring kernel of this machine returns the same ids, order and scores as
an exact ranking of every row, near-ties included; the error bound holds; the kernel is chosen by measurement.

The reference ranks *every* row by :func:`exact_scores` (float64 products of the float32 vectors, rounded to
float32) with a stable sort, so equal scores take the lowest row: the definition the search promises.
"""

from __future__ import annotations

import json

import pytest
import torch

import tasks.retrieval.backends.dense
from tasks.device import cpu_has_native_bf16
from tasks.retrieval.backends import kernels
from tasks.retrieval.backends.dense import ExactDense, ScoringCopy
from tasks.retrieval.backends.rescore import KERNELS, RowNorms, error_bound, exact_scores

KERNEL_NAMES = kernels.candidates("cpu")


def _reference(q: torch.Tensor, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    exact = torch.cat([exact_scores(q[i : i + 1].double(), x[None]) for i in range(len(q))])
    ranked = torch.sort(exact, dim=1, descending=True, stable=True)
    return ranked.indices[:, :k], ranked.values[:, :k]


def _dense(x: torch.Tensor, name: str, cuts: list[int]) -> ExactDense:
    bounds = [0, *cuts, x.shape[0]]
    blocks = [x[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    return ExactDense(blocks, [None] * len(blocks), bounds[:-1], ScoringCopy(KERNELS[name], blocks))


def _unit(n: int, d: int, g: torch.Generator) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


def _near_ties(q: torch.Tensor, n_filler: int, g: torch.Generator) -> tuple[torch.Tensor, list[int]]:
    """Rows whose exact scores against ``q`` crowd the cut-off far more tightly than bfloat16 can tell apart:
    ``x = a q + sqrt(1 - a²) o`` (o a unit vector orthogonal to q) has score ≈ a, and the a's below differ by
    1e-2 down to 1e-7, plus exact duplicates (true ties) and rows one float32 step apart, scattered among random
    filler rows so they fall in different tiles and blocks."""
    d = q.shape[0]
    alphas = [0.6 - 0.01 * i / 40 for i in range(40)] + [0.59 + j * 1e-7 for j in range(20)]
    alphas += [0.6] * 3 + [0.595] * 3  # duplicates: equal scores, lowest row first
    rows = []
    for a in alphas:
        o = torch.randn(d, generator=g, dtype=torch.float64)
        o -= (o @ q.double()) * q.double()
        o /= o.norm()
        rows.append((a * q.double() + (1 - a * a) ** 0.5 * o).float())
    base = rows[-1]
    rows.append(torch.nextafter(base, base + 1))  # one float32 step from a duplicate: a near-tie
    x = _unit(n_filler + len(rows), d, g) * 0.3  # filler scores stay far below 0.59
    x = torch.nn.functional.normalize(x, dim=1)
    spots = torch.randperm(x.shape[0], generator=g)[: len(rows)].sort().values.tolist()
    for spot, row in zip(spots, rows, strict=True):
        x[spot] = row
    return x, spots


@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_every_kernel_returns_the_exact_ranking_of_every_row(name):
    g = torch.Generator().manual_seed(1)
    x, q = _unit(3000, 64, g), _unit(200, 64, g)
    for k in (1, 10, 100):
        ref_rows, ref_scores = _reference(q, x, k)
        for cuts in ([], [1000], [7, 2500]):
            hits = _dense(x, name, cuts).search(q, k)
            assert torch.equal(hits.rows, ref_rows), (name, k, cuts)
            assert torch.equal(hits.scores, ref_scores), (name, k, cuts)


@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_adversarial_near_ties_are_ranked_exactly_in_any_tiling(name, monkeypatch):
    g = torch.Generator().manual_seed(2)
    d = 384
    q = _unit(1, d, g)[0]
    x, spots = _near_ties(q, 4000, g)
    queries = torch.stack([q, torch.nn.functional.normalize(q + 1e-4 * torch.randn(d, generator=g), dim=0)])
    k = 30
    ref_rows, ref_scores = _reference(queries, x, k)
    assert set(ref_rows[0].tolist()) <= set(spots)
    # bfloat16 alone gets this wrong, so the test can fail: its ranking of the same rows is not the exact one
    approx = (queries.bfloat16() @ x.bfloat16().T).float()
    assert not torch.equal(torch.sort(approx, dim=1, descending=True, stable=True).indices[:, :k], ref_rows)
    for tile_scores in (tasks.retrieval.backends.dense.TILE_SCORES, 2 * 512, 2 * 256):
        monkeypatch.setattr(tasks.retrieval.backends.dense, "TILE_SCORES", tile_scores)
        for cuts in ([], [spots[10] + 1], [spots[3], spots[30], spots[-1]]):
            hits = _dense(x, name, cuts).search(queries, k)
            assert torch.equal(hits.rows, ref_rows), (name, tile_scores, cuts)
            assert torch.equal(hits.scores, ref_scores), (name, tile_scores, cuts)
    dup = [spots[i] for i in range(60, 63)]  # the three duplicates at 0.6: tied, lowest row first
    first = [r for r in ref_rows[0].tolist() if r in dup]
    assert first == sorted(dup)


@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_a_query_gets_the_same_result_alone_or_in_any_batch(name):
    g = torch.Generator().manual_seed(3)
    x, q = _unit(5000, 96, g), _unit(300, 96, g)
    index = _dense(x, name, [2048])
    whole = index.search(q, 10)
    for i in (0, 17, 299):
        alone = index.search(q[i : i + 1], 10)
        assert torch.equal(alone.rows[0], whole.rows[i]) and torch.equal(alone.scores[0], whole.scores[i])
    batched = index.search(q, 10, query_batch=7)
    assert torch.equal(batched.rows, whole.rows) and torch.equal(batched.scores, whole.scores)


def test_the_bfloat16_error_bound_holds_and_is_not_loose():
    """|kernel score − true score| ≤ E + w'|a| for every pair, on random vectors and on the worst case for
    rounding: every component just below the midpoint between two bfloat16 numbers, so every rounding error has
    the same sign. There the error reaches a large part of the bound, which shows it is not vacuous."""
    g = torch.Generator().manual_seed(4)
    kernel = KERNELS["bfloat16"]
    d = 384
    # 2^-5 (1 + almost half a bfloat16 step): rounds down to 2^-5, the largest relative error there is
    worst = torch.full((1, d), 2.0**-5 * (1 + 2.0**-8 * (1 - 1e-3)))
    cases = [(_unit(64, d, g), _unit(2000, d, g)), (worst, worst)]
    ratios = []
    for q, x in cases:
        xk, qk = x.bfloat16(), q.bfloat16()
        approx = (qk @ xk.T).double()
        true = q.double() @ x.double().T
        b = error_bound(kernel, q, qk, RowNorms.of([x], [xk]))
        allowed = b.additive[:, None] + b.relative * approx.abs()
        assert bool(((approx - true).abs() <= allowed).all())
        ratios.append(float(((approx - true).abs() / allowed).max()))
    assert ratios[1] > 0.25, ratios  # the aligned rounding errors use a quarter of the bound or more


def test_the_kernel_is_the_fastest_measured_and_is_measured_once_per_machine(tmp_path, monkeypatch):
    path = tmp_path / "kernels.json"
    monkeypatch.setenv("RAGBATCH_KERNELS_FILE", str(path))
    monkeypatch.delenv(kernels.KERNEL_ENV, raising=False)
    sample = _unit(5000, 32, torch.Generator().manual_seed(5))
    names = kernels.candidates("cpu")
    fake = {n: 0.010 + 0.001 * i for i, n in enumerate(reversed(names))}  # the last candidate is fastest
    assert kernels.choose_kernel("cpu", sample, timer=fake.__getitem__).name == names[-1]
    entry = json.loads(path.read_text())[kernels.machine_key("cpu", 32, 5000)]
    assert entry["chosen"] == names[-1] and set(entry["ms"]) == set(names) and entry["rows"] == 4096

    def no_timing(name):
        raise AssertionError("measured again")

    assert kernels.choose_kernel("cpu", sample, timer=no_timing).name == names[-1]  # read back, not re-measured
    # another size class, another machine's entry, or a corrupt file: measured again
    assert kernels.choose_kernel("cpu", sample[:20000], timer=fake.__getitem__).name == names[-1]
    other = {k.replace("threads-", "threads-9"): v for k, v in json.loads(path.read_text()).items()}
    path.write_text(json.dumps(other))
    calls = []
    kernels.choose_kernel("cpu", sample, timer=lambda n: calls.append(n) or fake[n])
    assert sorted(calls) == sorted(names)
    path.write_text(json.dumps({kernels.machine_key("cpu", 32, 5000): {"ms": {n: "fast" for n in names}}}))
    assert kernels.choose_kernel("cpu", sample, timer=fake.__getitem__).name == names[-1]  # nonsense times
    path.write_text("{not json")
    assert kernels.choose_kernel("cpu", sample, timer=fake.__getitem__).name == names[-1]
    assert kernels.machine_key("cpu", 32, 5000) in json.loads(path.read_text())


def test_the_real_calibration_times_every_kernel_this_cpu_has(tmp_path, monkeypatch):
    """The CPU-feature rule (bfloat16 is a candidate exactly where it is native) checked against a measurement
    on this machine: every candidate is timed, and the choice is the fastest of them."""
    path = tmp_path / "kernels.json"
    monkeypatch.setenv("RAGBATCH_KERNELS_FILE", str(path))
    monkeypatch.delenv(kernels.KERNEL_ENV, raising=False)
    sample = _unit(4096, 64, torch.Generator().manual_seed(6))
    chosen = kernels.choose_kernel("cpu", sample)
    entry = json.loads(path.read_text())[kernels.machine_key("cpu", 64, 4096)]
    assert ("bfloat16" in entry["ms"]) == cpu_has_native_bf16()
    assert chosen.name == entry["chosen"] == min(entry["ms"], key=entry["ms"].get)
    assert all(v > 0 for v in entry["ms"].values())


def test_a_forced_kernel_is_used_and_an_unknown_one_is_refused(monkeypatch):
    sample = _unit(100, 16, torch.Generator().manual_seed(7))
    monkeypatch.setenv(kernels.KERNEL_ENV, "float32-numpy")
    assert kernels.choose_kernel("cpu", sample).name == "float32-numpy"
    monkeypatch.setenv(kernels.KERNEL_ENV, "int4")
    with pytest.raises(ValueError, match="RAGBATCH_SEARCH_KERNEL='int4'.*float32"):
        kernels.choose_kernel("cpu", sample)


def test_no_16bit_copy_is_made_where_it_would_not_fit_in_memory(tmp_path, monkeypatch):
    """A 16-bit kernel needs its own copy of the matrix: for an index whose copy would not fit, only float32
    kernels are candidates, and a stored measurement gives the fastest of those without measuring again."""
    monkeypatch.setenv("RAGBATCH_KERNELS_FILE", str(tmp_path / "kernels.json"))
    monkeypatch.delenv(kernels.KERNEL_ENV, raising=False)
    huge = 1 << 60
    assert kernels.candidates("cpu", huge) == ["float32", "float32-numpy"]
    sample = _unit(4096, 32, torch.Generator().manual_seed(8))
    names = kernels.candidates("cpu")
    fake = {n: 0.010 + 0.001 * i for i, n in enumerate(reversed(names))}  # the last candidate is fastest
    kernels.choose_kernel("cpu", sample, timer=fake.__getitem__)

    def no_timing(name):
        raise AssertionError("measured again")

    best_fp32 = min(["float32", "float32-numpy"], key=fake.__getitem__)
    assert kernels.choose_kernel("cpu", sample, timer=no_timing, rows=huge).name == best_fp32
    monkeypatch.setenv(kernels.KERNEL_ENV, "bfloat16")
    if "bfloat16" in names:
        with pytest.raises(ValueError, match="not a kernel"):
            kernels.choose_kernel("cpu", sample, rows=huge)


def test_a_process_wide_lower_matmul_precision_does_not_break_exactness():
    """``set_float32_matmul_precision("medium")`` lets float32 matmuls run in bfloat16 (on AMX, oneDNN does): the
    float32 kernel's bound would not hold, so the search holds the setting off for its matmuls, and gives it
    back."""
    g = torch.Generator().manual_seed(9)
    q = _unit(1, 384, g)[0]
    x, _ = _near_ties(q, 3000, g)
    queries = torch.nn.functional.normalize(q + 1e-4 * torch.randn(64, 384, generator=g), dim=1)  # a GEMM, not a
    ref_rows, ref_scores = _reference(queries, x, 30)  # gemv, which ignores the setting
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        hits = _dense(x, "float32", [1500]).search(queries, 30)
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)
    assert torch.equal(hits.rows, ref_rows) and torch.equal(hits.scores, ref_scores)
