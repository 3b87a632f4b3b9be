"""The seed lab's checks on the real demo corpus (HELM model descriptions) with the real default models."""

from __future__ import annotations

import json

import polars as pl
import pytest

from storage.store import open_store
from tasks.retrieval.search import RETRIEVERS, load_dense_index, search

LLAMA3_Q = "How many tokens was Llama 3 trained on?"


@pytest.fixture(scope="session")
def demo_store(prefect_harness, demo_corpus, tmp_path_factory):
    from flows.index import run_index

    store = tmp_path_factory.mktemp("demo") / "store"
    report = run_index(demo_corpus, store)
    assert report.added >= 600 and report.skipped_files == []
    return store


def test_every_embedding_is_unit_norm_and_rows_equal_chunks(demo_store):
    st = open_store(demo_store)
    meta = st.meta()
    manifest = st.manifest(meta)
    n_chunks = sum(manifest["n_chunks"].to_pylist())
    rows = 0
    for info in meta.shards:
        emb, chunks = st.read_shard(info, check_sha=True)
        assert float((emb.norm(dim=1) - 1).abs().max()) < 1e-3
        rows += emb.shape[0]
        assert emb.shape[0] == chunks.num_rows
    idx = load_dense_index(st, "cpu")
    assert idx.rows == rows == n_chunks == meta.live_rows
    assert len(set(idx.chunks["chunk_id"].to_pylist())) == idx.rows


@pytest.mark.parametrize("retriever", RETRIEVERS)
def test_scores_descending_and_k_results(demo_store, retriever):
    res, _ = search(str(demo_store), [LLAMA3_Q, "Which company created Claude?", "zzzz qqqq"], k=7,
                    retriever=retriever)
    for r in res[:2]:
        assert len(r.chunk_ids) == 7 and r.scores == sorted(r.scores, reverse=True)
        assert len(set(r.chunk_ids)) == 7
    if retriever == "dense":
        assert all(-1.0 <= s <= 1.0 for r in res for s in r.scores)


def test_llama3_query_top1_is_a_llama3_document(demo_store):
    (hybrid,), _ = search(str(demo_store), [LLAMA3_Q], k=5, retriever="hybrid")
    assert "llama-3" in hybrid.doc_ids[0], hybrid.doc_ids
    assert "15 trillion" in hybrid.texts[0]
    # Dense MiniLM alone ranks Llama 2 documents first on this corpus (measured 0.654 vs 0.614): the reason
    # hybrid is the default. It still finds Llama 3 in its top 5.
    (dense,), _ = search(str(demo_store), [LLAMA3_Q], k=5, retriever="dense")
    assert any("llama-3" in d for d in dense.doc_ids)


@pytest.mark.slow
def test_rag_answer_mentions_15_trillion_and_differs(demo_store, tmp_path):
    from flows.answer import run_answer
    from tasks.demo.corpus import DEMO_QUESTIONS

    q = tmp_path / "q.jsonl"
    first = json.loads(DEMO_QUESTIONS.read_text().splitlines()[0])
    assert first["question"] == LLAMA3_Q
    q.write_text(json.dumps(first) + "\n")
    out = tmp_path / "r.parquet"
    run_answer(q, demo_store, out, k=5)  # default generator: Qwen2.5-Coder-0.5B-Instruct
    row = pl.read_parquet(out).row(0, named=True)
    assert row["rag_answer"] != row["no_rag_answer"] and row["answers_differ"]
    assert "15 trillion" in row["rag_answer"].lower()
    assert "llama-3" in row["doc_ids"][0]


def test_search_cli_prints_descending_ranked_hits(demo_store):
    from typer.testing import CliRunner

    from ragbatch.cli import app

    result = CliRunner().invoke(app, ["search", LLAMA3_Q, "--store", str(demo_store), "-k", "4", "-r", "dense"])
    assert result.exit_code == 0, result.output
    lines = [ln.split() for ln in result.output.splitlines() if ln.strip()[:1].isdigit()]
    assert [int(ln[0]) for ln in lines] == [1, 2, 3, 4]
    scores = [float(ln[1]) for ln in lines]
    assert scores == sorted(scores, reverse=True) and all(len(ln[1].split(".")[1]) == 4 for ln in lines)
    bad = CliRunner().invoke(app, ["search", "x", "--store", str(demo_store / "nope")])
    assert bad.exit_code == 2 and "no index at" in bad.output

