"""Dense search: sharded exact search equals one-tensor search, ties deterministic, k clipped; quantized
matrices and FAISS HNSW stay within their error bounds of exact search."""

from __future__ import annotations

import pyarrow as pa
import torch

from storage.store import CHUNK_SCHEMA
from tasks.retrieval.search import LoadedGeneration, quantize_int8


def _index(matrix: torch.Tensor, sizes: list[int]) -> LoadedGeneration:
    shards, offsets, off = [], [], 0
    for n in sizes:
        shards.append(matrix[off : off + n])
        offsets.append(off)
        off += n
    rows = [{"chunk_id": str(i), "doc_id": str(i), "doc_sha256": "", "chunk_index": 0, "text": "",
             "char_start": 0, "char_end": 0, "n_tokens": 0} for i in range(off)]
    return LoadedGeneration(None, 1, {}, shards, offsets, pa.Table.from_pylist(rows, schema=CHUNK_SCHEMA))


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


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_quantized_matrices_return_near_exact_results():
    """float16 / bfloat16 / int8 rows: every hit's exact cosine is within the dtype's error of the exact k-th."""
    x, q = _unit(20000, 384, 1), _unit(100, 384, 2)
    exact = _index(x, [20000]).search(q, 10)
    true = q @ x.T
    kth = exact.scores[:, -1:]
    for name, eps in (("float16", 2e-3), ("bfloat16", 1.5e-2), ("int8", 1e-2)):
        sizes = [7000, 13000]
        idx = _index(x.to(getattr(torch, name)) if name != "int8" else x, sizes)
        if name == "int8":
            parts = [quantize_int8(s) for s in idx.shards]
            idx.shards, idx.scales = [p[0] for p in parts], [p[1] for p in parts]
            assert idx.shards[0].dtype == torch.int8
        hits = idx.search(q, 10)
        got_true = true.gather(1, hits.rows)
        assert bool((got_true >= kth - eps).all()), name  # nothing far below the exact top-10 comes back
        assert float((hits.scores - got_true).abs().max()) < eps, name  # its scores approximate the cosines
        assert bool((hits.scores[:, :-1] >= hits.scores[:, 1:]).all())
        overlap = sum(len(set(a) & set(b)) for a, b in zip(hits.rows.tolist(), exact.rows.tolist(), strict=True))
        assert overlap / exact.rows.numel() > 0.8, name  # random vectors: top-10 scores lie within ~1e-2


def test_hnsw_recall_against_exact():
    from tasks.retrieval.backends.ann import HNSWIndex

    x, q = _unit(5000, 64, 3), _unit(200, 64, 4)
    exact = _index(x, [5000]).search(q, 10)
    ann = HNSWIndex([x[:3000], x[3000:]], 64)
    rows, scores = ann.search(q, 10)
    recall = sum(len(set(a) & set(b)) for a, b in zip(rows.tolist(), exact.rows.tolist(), strict=True)) / 2000
    assert recall >= 0.9, recall
    assert torch.allclose(scores, (q @ x.T).gather(1, rows), atol=1e-5)  # exact inner products of what it found
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())
    small = HNSWIndex([x[:3]], 64)
    r, s = small.search(q[:2], 10)
    assert r.shape == (2, 3) and sorted(r[0].tolist()) == [0, 1, 2]  # k clipped to the rows there are


def test_ties_inside_and_at_the_cut_off_take_the_lowest_rows_in_any_tiling(monkeypatch):
    """Small-integer vectors make dot products exact, so many scores tie whatever the BLAS order; the result must
    equal a stable sort of the full score matrix however the rows are packed and tiled (the fast path checks the
    k + 1 best scores only)."""
    import tasks.retrieval.backends.dense

    g = torch.Generator().manual_seed(5)
    x = torch.randint(-2, 3, (300, 8), generator=g).float()
    q = torch.randint(-2, 3, (40, 8), generator=g).float()
    ref = torch.sort(q @ x.T, dim=1, descending=True, stable=True)
    for tile_scores in (tasks.retrieval.backends.dense.CPU_TILE_SCORES, 40 * 32, 40 * 7):
        monkeypatch.setattr(tasks.retrieval.backends.dense, "CPU_TILE_SCORES", tile_scores)  # int8 / half path
        monkeypatch.setattr(tasks.retrieval.backends.dense, "TILE_SCORES", tile_scores)  # rescored float32 path
        for sizes in ([300], [100, 7, 193], [1] * 10 + [290]):
            for k in (1, 10, 300, 400):
                hits = _index(x, sizes).search(q, k, query_batch=16)
                kk = min(k, 300)
                assert torch.equal(hits.rows, ref.indices[:, :kk]), (tile_scores, sizes, k)
                assert torch.equal(hits.scores, ref.values[:, :kk])


def test_rows_are_packed_into_few_matrices_in_row_order():
    from tasks.retrieval.loaded_index import RowPacker

    x = _unit(10, 8, 6)
    packer = RowPacker(10, "cpu", "float32", pack_rows=4)
    for part in (x[:3], x[3:8], x[8:]):
        packer.add(part)
    blocks, scales, offsets = packer.matrices()
    assert [b.shape[0] for b in blocks] == [4, 4, 2] and offsets == [0, 4, 8] and scales == [None] * 3
    assert torch.equal(torch.cat(blocks), x)
    int8 = RowPacker(10, "cpu", "int8", pack_rows=6)
    int8.add(x)
    b8, s8, _ = int8.matrices()
    q8, sc = quantize_int8(x)
    assert torch.equal(torch.cat(b8), q8) and torch.equal(torch.cat(s8), sc)


def test_a_batch_of_queries_is_embedded_once(monkeypatch):
    """A hybrid search and the cosines beside it (or eval's exact and approximate searches) share one embedding."""
    from types import SimpleNamespace

    import tasks.retrieval.retrievers as retrievers
    from tasks.cache import ProcessCache

    calls: list[list[str]] = []

    class FakeEmbedder:
        def embed_queries(self, queries: list[str]) -> torch.Tensor:
            calls.append(list(queries))
            return torch.ones(len(queries), 4)

    monkeypatch.setattr(retrievers, "load_embedder", lambda config, device: FakeEmbedder())
    monkeypatch.setattr(retrievers, "_RECENT_QUERIES", ProcessCache(max_items=retrievers.RECENT_BATCHES))
    config = SimpleNamespace(fingerprint={"id": "fid"}, path="/m")
    first = retrievers.embed_queries(config, "cpu", ["a", "b"])
    assert retrievers.embed_queries(config, "cpu", ["a", "b"]) is first and calls == [["a", "b"]]
    for i in range(retrievers.RECENT_BATCHES):
        retrievers.embed_queries(config, "cpu", [str(i)])
    retrievers.embed_queries(config, "cpu", ["a", "b"])  # evicted by the newer batches: embedded again
    assert len(calls) == retrievers.RECENT_BATCHES + 2
