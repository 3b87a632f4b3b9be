"""Exact dense search: sharded search equals one-tensor search, ties deterministic, k clipped."""

from __future__ import annotations

import pyarrow as pa
import torch

from storage.store import CHUNK_SCHEMA
from tasks.retrieve import DenseIndex


def _index(matrix: torch.Tensor, sizes: list[int]) -> DenseIndex:
    shards, offsets, off = [], [], 0
    for n in sizes:
        shards.append(matrix[off : off + n])
        offsets.append(off)
        off += n
    rows = [{"chunk_id": str(i), "doc_id": str(i), "doc_sha256": "", "chunk_index": 0, "text": "",
             "char_start": 0, "char_end": 0, "n_tokens": 0} for i in range(off)]
    return DenseIndex(None, 1, {}, shards, offsets, pa.Table.from_pylist(rows, schema=CHUNK_SCHEMA))


def test_sharded_equals_single_tensor_exactly():
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(5000, 64, generator=g), dim=1)
    q = torch.nn.functional.normalize(torch.randn(50, 64, generator=g), dim=1)
    one = _index(x, [5000]).search(q, 10)
    many = _index(x, [1200, 7, 2000, 1793]).search(q, 10, query_batch=16)
    # Same ids in the same order; scores agree to float rounding (BLAS blocks differently per shape).
    assert torch.equal(one.rows, many.rows) and torch.allclose(one.scores, many.scores, atol=1e-6, rtol=0)
    ref = torch.topk(q @ x.T, 10)
    assert torch.equal(one.rows, ref.indices) and torch.allclose(one.scores, ref.values)
    assert bool((one.scores[:, :-1] >= one.scores[:, 1:]).all())
    assert float(one.scores.max()) <= 1.0 + 1e-6 and float(one.scores.min()) >= -1.0 - 1e-6


def test_ties_are_broken_by_row_order_across_shards():
    x = torch.zeros(12, 4)
    x[:, 0] = 1.0  # every row identical: all scores tie
    q = torch.tensor([[1.0, 0, 0, 0]])
    for sizes in ([12], [5, 7], [3, 3, 3, 3], [1, 11]):
        assert _index(x, sizes).search(q, 6).rows.tolist() == [[0, 1, 2, 3, 4, 5]]


def test_k_larger_than_corpus_returns_everything_without_error():
    x = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
    hits = _index(x, [2, 1]).search(x, 10)
    assert hits.rows.shape == (3, 3)
    assert hits.rows[:, 0].tolist() == [0, 1, 2]  # each row is its own nearest neighbour
