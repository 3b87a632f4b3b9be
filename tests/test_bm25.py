"""BM25 (tantivy) and reciprocal rank fusion."""

from __future__ import annotations

import shutil

import pytest
import torch

from tasks.retrieval.backends.bm25 import BM25Index
from tasks.retrieval.fusion import rrf_fuse


def test_rrf_equals_hand_computation():
    dense = torch.tensor([[10, 11, 12]])
    bm25 = torch.tensor([[12, 13, -1]])  # -1: BM25 found only two rows
    rows, scores = rrf_fuse([dense, bm25], k=4, rrf_k=60)
    expected = {10: 1 / 61, 11: 1 / 62, 12: 1 / 63 + 1 / 61, 13: 1 / 62}
    order = sorted(expected, key=lambda r: -expected[r])
    assert rows[0].tolist()[0] == 12
    assert rows[0].tolist() == [12, 10, 11, 13] == [order[0], 10, 11, 13]  # 11 and 13 tie: best rank, then row
    assert scores[0].tolist() == pytest.approx([expected[r] for r in [12, 10, 11, 13]])
    w_rows, _ = rrf_fuse([dense, bm25], k=4, rrf_k=60, weights=[1.0, 0.0])
    assert w_rows[0].tolist()[:3] == [10, 11, 12]


def test_hybrid_never_returns_duplicates():
    g = torch.Generator().manual_seed(1)
    a = torch.stack([torch.randperm(30, generator=g)[:10] for _ in range(20)])
    b = torch.stack([torch.randperm(30, generator=g)[:10] for _ in range(20)])
    rows, scores = rrf_fuse([a, b], k=15)
    for r, s in zip(rows.tolist(), scores.tolist(), strict=True):
        live = [x for x in r if x >= 0]
        assert len(live) == len(set(live))
        assert s == sorted(s, reverse=True)


def test_bm25_ranks_term_matches_and_stems():
    idx = BM25Index.from_texts([
        "Bananas are yellow fruits.",
        "The train departed from the station.",
        "Trains and training: a banana story.",
        "Nothing relevant here.",
    ])
    rows, scores = idx.search(["banana", "trained", "(weird) \"query\" OR: x^2 -"], k=3)
    assert set(rows[0, :2].tolist()) == {0, 2} and rows[0, 2].item() == -1  # only two documents match
    assert set(rows[1, :2].tolist()) == {1, 2}  # en_stem: trained ~ train ~ training
    assert scores[0, 0] >= scores[0, 1]
    assert rows[2].tolist() == [-1, -1, -1]  # query syntax is neutralised, not an error


def test_bm25_top10_agrees_with_bm25s_and_rank_bm25(demo_corpus):
    """Same k1/b and tokenization (lower-case alphanumeric, no stemming): the engines differ only in idf
    variants and tie order (the HELM corpus repeats descriptions), so overlap is high but not total."""
    import json
    import re

    import bm25s
    import numpy as np
    from rank_bm25 import BM25Okapi

    from tasks.demo.corpus import DEMO_QUESTIONS

    docs = [json.loads(x)["text"] for x in (demo_corpus / "helm_models.jsonl").read_text().splitlines()]
    qs = [json.loads(x)["question"] for x in DEMO_QUESTIONS.read_text().splitlines()]

    def tok(t: str) -> list[str]:
        return re.findall(r"[a-z0-9]+", t.lower())

    ours, _ = BM25Index.from_texts(docs, tokenizer="default").search(qs, 10)
    ref = bm25s.BM25(k1=1.2, b=0.75, method="lucene")  # tantivy's scoring is Lucene's BM25
    ref.index([tok(d) for d in docs], show_progress=False)
    ref_rows, _ = ref.retrieve([tok(q) for q in qs], k=10, show_progress=False)
    okapi = BM25Okapi([tok(d) for d in docs], k1=1.2, b=0.75)
    overlap_s, overlap_r = [], []
    for q, mine, theirs in zip(qs, ours.tolist(), ref_rows.tolist(), strict=True):
        overlap_s.append(len(set(mine) & set(theirs)) / 10)
        top = np.argsort(-okapi.get_scores(tok(q)), kind="stable")[:10].tolist()
        overlap_r.append(len(set(mine) & set(top)) / 10)
    # Measured: 0.91 with bm25s (Lucene idf), 0.83 with rank_bm25 (Okapi idf with an epsilon floor).
    assert sum(overlap_s) / len(qs) >= 0.85, overlap_s
    assert sum(overlap_r) / len(qs) >= 0.75, overlap_r


# ---------------------------------------------------------------- the on-disk index beside the shards
def _top(index, query: str) -> str | None:
    rows, _ = index.bm25.search([query], 1)
    r = rows[0, 0].item()
    return None if r < 0 else index.chunks["doc_id"][r].as_py()


def test_disk_bm25_follows_incremental_reindex_and_catches_up(prefect_harness, tmp_path):
    """Adds, changes and removals reach the tantivy index by document id; a stale one is used by nobody."""
    from conftest import write_corpus
    from flows.index import run_index
    from storage.store import open_store
    from storage.store.bm25 import DiskBM25
    from tasks.retrieval.search import load_dense_index

    texts = {f"d{i}.txt": f"Document {i} talks about {w} and nothing else." for i, w in
             enumerate(["aardvarks", "bicycles", "cathedrals", "dolphins", "eclipses"])}
    docs = write_corpus(tmp_path / "docs", texts)
    store = tmp_path / "store"
    first = run_index(docs, store)
    st = open_store(store)
    assert (first.bm25_docs_added, first.bm25_docs_deleted, first.bm25_rebuilt) == (5, 0, True)
    assert DiskBM25(store).state() == (st.meta().generation, 5)
    idx = load_dense_index(st, "cpu")
    assert idx.bm25.source == "disk" and _top(idx, "dolphins") == "d3.txt"
    stale = tmp_path / "bm25-stale"
    shutil.copytree(store / "bm25", stale)

    (docs / "d3.txt").write_text("Document 3 now talks about glaciers instead.")
    (docs / "d4.txt").unlink()
    (docs / "d5.txt").write_text("Document 5 is new and talks about harpsichords.")
    second = run_index(docs, store)
    # Only the changed (d3), removed (d4) and added (d5) documents touched the BM25 index.
    assert (second.bm25_docs_deleted, second.bm25_docs_added, second.bm25_rebuilt) == (2, 2, False)
    gen = st.meta().generation
    assert DiskBM25(store).state() == (gen, 5) and st.verify().problems == []
    idx = load_dense_index(st, "cpu")
    assert idx.bm25.source == "disk"
    assert [_top(idx, q) for q in ("glaciers", "dolphins", "eclipses", "harpsichords", "aardvarks")] == [
        "d3.txt", None, None, "d5.txt", "d0.txt"]

    # A BM25 index left behind (a writer killed between its two commits) is not used; the next run repairs it.
    shutil.rmtree(store / "bm25")
    shutil.copytree(stale, store / "bm25")
    rep = st.verify()
    assert "behind" in rep.bm25 and rep.problems == []
    idx = load_dense_index(st, "cpu")  # (it logs a warning)
    assert idx.bm25.source == "memory" and _top(idx, "glaciers") == "d3.txt" and _top(idx, "dolphins") is None
    third = run_index(docs, store)
    assert (third.added, third.changed, third.chunks_embedded) == (0, 0, 0)
    assert (third.bm25_docs_deleted, third.bm25_docs_added) == (2, 2)
    assert DiskBM25(store).state() == (gen, 5) and load_dense_index(st, "cpu").bm25.source == "disk"

    # A corrupt index is rebuilt from the live chunks (it is derived data).
    (store / "bm25" / "tantivy" / "meta.json").write_text("garbage")
    (docs / "d0.txt").write_text("Document 0 is about zeppelins now.")
    fourth = run_index(docs, store)
    assert fourth.bm25_rebuilt and DiskBM25(store).state() == (st.meta().generation, 5)
    assert _top(load_dense_index(st, "cpu"), "zeppelins") == "d0.txt"
