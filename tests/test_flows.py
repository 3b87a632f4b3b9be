"""End to end under a real Prefect server: index → incremental re-index → answer → Parquet read back."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys

import polars as pl
import pytest

from conftest import ROOT, SMALLEST_GENERATOR, write_corpus
from helpers import CLI
from storage.store import EmbedderMismatchError, open_store
from tasks.retrieval.search import load_dense_index, search

DOCS = {
    "llama3.txt": "Llama 3 was pretrained on over 15 trillion tokens of data from publicly available sources.",
    "bananas.md": "# Bananas\n\nBananas are yellow fruit grown in the tropics and eaten all over the world.",
    "paris.txt": "Paris is the capital and most populous city of France.",
    "notes.jsonl": '{"id": "everest", "text": "Mount Everest is the highest mountain above sea level, 8,849 m."}\n'
                   '{"id": "nile", "text": "The Nile is a major north-flowing river in northeastern Africa."}\n',
    "empty.txt": "",
    "binary.txt": b"\x00\x01\x02\x03",
    "latin1.txt": "caf\xe9 au lait".encode("latin-1"),
}


@pytest.fixture()
def corpus(tmp_path):
    return write_corpus(tmp_path / "docs", DOCS)


def test_index_reindex_and_search(prefect_harness, corpus, tmp_path):
    from flows.index import run_index

    store = tmp_path / "store"
    r = run_index(corpus, store, batch_docs=2)
    assert (r.added, r.changed, r.unchanged, r.removed) == (5, 0, 0, 0)
    assert len(r.skipped_files) == 3 and any("binary.txt" in s for s in r.skipped_files)
    assert r.live_chunks == r.chunks_embedded == 5 and r.shards == 3  # one shard per batch of 2 documents
    idx = load_dense_index(open_store(store), "cpu")
    assert idx.rows == r.live_chunks  # exactly one row per chunk
    for shard in idx.shards:
        assert float((shard.norm(dim=1) - 1).abs().max()) < 1e-3
    (res,), _ = search(str(store), ["What is the capital of France?"], k=3)
    assert res.doc_ids[0] == "paris.txt" and res.scores == sorted(res.scores, reverse=True)

    # A re-run with nothing changed embeds nothing.
    again = run_index(corpus, store)
    assert (again.added, again.changed, again.unchanged, again.removed, again.chunks_embedded) == (0, 0, 5, 0, 0)

    # Change one, add one, delete one: exactly those are processed.
    (corpus / "paris.txt").write_text("Paris is the capital of France; the Seine flows through it.")
    (corpus / "rome.txt").write_text("Rome is the capital city of Italy.")
    (corpus / "bananas.md").unlink()
    dry = run_index(corpus, store, dry_run=True)
    assert (dry.added, dry.changed, dry.removed, dry.chunks_embedded) == (1, 1, 1, 0)
    r2 = run_index(corpus, store)
    assert (r2.added, r2.changed, r2.unchanged, r2.removed) == (1, 1, 3, 1)
    assert sorted(r2.embedded_doc_ids) == ["paris.txt", "rome.txt"] and r2.removed_doc_ids == ["bananas.md"]
    assert r2.live_chunks == 5
    (fruit,), _ = search(str(store), ["yellow tropical fruit"], k=10)
    assert "bananas.md" not in fruit.doc_ids  # the deleted document never comes back
    (paris,), _ = search(str(store), ["Which river flows through Paris?"], k=1)
    assert paris.doc_ids == ["paris.txt"] and "Seine" in paris.texts[0]  # the changed one has its new text
    assert len(set(fruit.chunk_ids)) == len(fruit.chunk_ids) == 5

    # The seed checks for every retriever and matrix dtype: descending scores, k results or fewer without error,
    # no duplicates, no deleted document, the changed document found by its new text.
    from tasks.retrieval.search import RETRIEVERS

    for retriever in RETRIEVERS:
        for dtype in ("auto", "float16", "int8"):
            got, _ = search(str(store), ["Which river flows through Paris?", "yellow tropical fruit"], k=10,
                            retriever=retriever, matrix_dtype=dtype)
            for res in got:
                assert res.scores == sorted(res.scores, reverse=True), (retriever, dtype)
                assert len(set(res.chunk_ids)) == len(res.chunk_ids) <= 5 and "bananas.md" not in res.doc_ids
            assert got[0].doc_ids[0] == "paris.txt", (retriever, dtype)
            if retriever != "bm25":  # BM25 returns only chunks sharing a term with the query
                assert len(got[1].chunk_ids) == 5
    # Fusion weights: with BM25 weighted 0, hybrid ranks exactly as dense does (hybrid's own default is 1, 1).
    qs = ["capital of Italy", "yellow tropical fruit", "highest mountain"]
    dense, _ = search(str(store), qs, k=5, retriever="dense")
    even, _ = search(str(store), qs, k=5, retriever="hybrid")
    assert even[0].chunk_ids != dense[0].chunk_ids  # so the weights below must matter
    only_dense, _ = search(str(store), qs, k=5, retriever="hybrid", hybrid_weights=[1.0, 0.0])
    assert [r.chunk_ids for r in only_dense] == [r.chunk_ids for r in dense]


def test_unreadable_file_keeps_its_indexed_version(prefect_harness, corpus, tmp_path):
    from flows.index import run_index

    store = tmp_path / "store"
    run_index(corpus, store)
    (corpus / "paris.txt").write_bytes(b"\x00 suddenly binary")
    r = run_index(corpus, store)
    assert r.removed == 0 and any("paris.txt: binary file" in s for s in r.skipped_files)
    (res,), _ = search(str(store), ["capital of France"], k=1)
    assert res.doc_ids == ["paris.txt"]


def test_answer_flow_writes_results_and_reports_bad_rows(prefect_harness, corpus, tmp_path):
    from flows.answer import run_answer
    from flows.index import run_index

    store = tmp_path / "store"
    run_index(corpus, store)
    qfile = tmp_path / "questions.jsonl"
    qfile.write_text(
        json.dumps({"id": "q1", "question": "How many tokens was Llama 3 trained on?", "answers": ["15 trillion"]})
        + "\n{this is not json\n"
        + json.dumps({"id": "q2", "question": "What is the capital of France?"}) + "\n"
    )
    csv = tmp_path / "more.csv"
    csv.write_text("id,question,answers\nq3,Which river flows north in Africa?,Nile\n")
    out = tmp_path / "results.parquet"
    rep = run_answer([qfile, csv], store, out, k=2, generator=SMALLEST_GENERATOR, max_new_tokens=12)
    assert rep.questions == 3 and len(rep.question_errors) == 1 and ":2" in rep.question_errors[0]
    df = pl.read_parquet(out)
    assert df["question_id"].to_list() == ["q1", "q2", "q3"]
    for col in ("chunk_ids", "doc_ids", "scores", "no_rag_answer", "rag_answer", "answers_differ", "generator",
                "embedder", "retrieve_s", "generate_s"):
        assert col in df.columns
    row = df.row(0, named=True)
    assert row["doc_ids"][0] == "llama3.txt" and len(row["chunk_ids"]) == 2
    assert row["scores"][0] >= row["scores"][1] and row["gold_answers"] == ["15 trillion"]
    assert all(a.strip() for a in df["no_rag_answer"].to_list() + df["rag_answer"].to_list())
    assert df.row(2, named=True)["doc_ids"][0] == "notes.jsonl#nile"
    config = json.loads((tmp_path / "results.config.json").read_text())
    assert config["generator"] == SMALLEST_GENERATOR and config["k"] == 2


def test_answer_run_records_its_generation_settings(prefect_harness, corpus, tmp_path):
    """dtype, prompt, token budget and snapping are one typed config, saved with the run; raw output kept."""
    from flows.answer import run_answer
    from flows.index import run_index
    from tasks.config import GenerationConfig
    from tasks.text import normalize_answer

    store = tmp_path / "store"
    run_index(corpus, store)
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps({"id": f"q{i}", "question": q}) + "\n" for i, q in enumerate(
        ["How many tokens was Llama 3 trained on?", "What is the capital of France?", "Which river flows north?"])))
    out = tmp_path / "res.parquet"
    gs = GenerationConfig(generator=SMALLEST_GENERATOR, dtype="float32", prompt="extract", max_new_tokens=12)
    rep = run_answer(qfile, store, out, k=2, generation=gs)
    assert rep.dtype == "float32" and rep.prompt_tokens > 0 and rep.padding_ratio <= 1.15
    config = json.loads((tmp_path / "res.config.json").read_text())
    assert config["generation"]["prompt"] == "extract" and config["generation"]["dtype"] == "float32"
    assert config["generator_dtype"] == "float32" and config["embedder_dtype"] in ("float32", "bfloat16")
    assert config["generation_stats"]["padding_ratio"] == round(rep.padding_ratio, 3)
    df = pl.read_parquet(out)
    for row in df.iter_rows(named=True):
        final, raw = row["rag_answer"], row["rag_raw"]
        passages = normalize_answer(" ".join(row["chunk_texts"]))
        assert final == raw or (len(final) < len(raw) and normalize_answer(final) in passages), (final, raw)


def test_killed_answer_run_resumes_from_its_finished_batches(prefect_harness, api_env, corpus, tmp_path):
    """A run stopped by SIGTERM after its first batch (of three), then killed after its second, redoes only the
    third; the table equals a clean run's."""
    from flows.answer import run_answer
    from flows.index import run_index
    from storage.testing import KILL_ENV

    store = tmp_path / "store"
    run_index(corpus, store)
    qfile = tmp_path / "questions.jsonl"
    qfile.write_text("".join(json.dumps({"id": f"q{i}", "question": q}) + "\n" for i, q in enumerate(
        ["How many tokens was Llama 3 trained on?", "What is the capital of France?", "How high is Everest?"])))
    kw = {"k": 2, "generator": SMALLEST_GENERATOR, "max_new_tokens": 8, "batch_questions": 1}
    clean = run_answer(qfile, store, tmp_path / "clean.parquet", **kw)
    out = tmp_path / "killed.parquet"
    # SIGTERM (as `kill PID` sends) during the run: said at once, the batch in hand is kept, no other is started,
    # and the CLI exits 128 + 15 naming what was kept.
    proc = subprocess.run([*CLI, "answer", str(qfile), "--store", str(store),
                           "--out", str(out), "-k", "2", "--generator", SMALLEST_GENERATOR, "--max-new-tokens", "8",
                           "--batch-questions", "1"], cwd=ROOT,
                          env=dict(api_env, **{KILL_ENV: "after-result-part:1:term"}), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "SIGTERM: stopping the answer run after the current batch" in proc.stderr
    assert "stopped: the answer run stopped by SIGTERM: 1 batches of 1 questions are kept" in proc.stderr
    assert not out.exists() and len(list((tmp_path / "killed.parquet.parts").glob("*.parquet"))) == 1
    script = ("import sys; from flows.answer import run_answer; "
              f"run_answer(sys.argv[1], sys.argv[2], sys.argv[3], **{kw!r})")
    proc = subprocess.run([sys.executable, "-c", script, str(qfile), str(store), str(out)], cwd=ROOT,
                          env=dict(api_env, **{KILL_ENV: "after-result-part:1"}), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not out.exists() and len(list((tmp_path / "killed.parquet.parts").glob("*.parquet"))) == 2
    shutil.copytree(tmp_path / "killed.parquet.parts", tmp_path / "other.parquet.parts")
    resumed = run_answer(qfile, store, out, **kw)
    assert resumed.resumed_batches == 2 and clean.resumed_batches == 0
    assert not (tmp_path / "killed.parquet.parts").exists()
    cols = ["question_id", "chunk_ids", "scores", "no_rag_answer", "rag_answer"]
    assert pl.read_parquet(out).select(cols).equals(pl.read_parquet(tmp_path / "clean.parquet").select(cols))
    # Parts of other settings are not reused: the same parts under a run with another k are all redone.
    other = run_answer(qfile, store, tmp_path / "other.parquet", **dict(kw, k=1))
    assert other.resumed_batches == 0 and pl.read_parquet(tmp_path / "other.parquet")["chunk_ids"].list.len().max() == 1


def test_query_with_another_embedder_is_refused(prefect_harness, corpus, tmp_path, minilm):
    from flows.index import run_index

    store = tmp_path / "store"
    run_index(corpus, store)
    other = tmp_path / "minilm-cls"
    shutil.copytree(minilm.path, other)
    pool = other / "1_Pooling" / "config.json"
    cfg = json.loads(pool.read_text())
    cfg.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    pool.write_text(json.dumps(cfg))
    with pytest.raises(EmbedderMismatchError, match=r"built with embedder 'all-MiniLM-L6-v2'.*minilm-cls"):
        search(str(store), ["anything"], embedder=str(other))


def test_answer_reruns_from_its_config_file(prefect_harness, api_env, corpus, tmp_path):
    """`ragbatch answer --config RUN.config.json` restores questions, store and settings; given options win."""
    from flows.index import run_index

    store = tmp_path / "store"
    run_index(corpus, store)
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps({"id": f"q{i}", "question": q}) + "\n" for i, q in enumerate(
        ["How many tokens was Llama 3 trained on?", "Which river flows north in Africa?"])))

    def cli(*args: str) -> None:
        proc = subprocess.run([*CLI, "answer", *args], cwd=ROOT, env=api_env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    first = tmp_path / "first.parquet"
    cli(str(qfile), "--store", str(store), "--out", str(first), "-k", "2", "--retriever", "bm25", "--rrf-k", "7",
        "--generator", SMALLEST_GENERATOR, "--max-new-tokens", "6", "--no-snap")
    saved = json.loads((tmp_path / "first.config.json").read_text())
    assert saved["retrieval"]["retriever"] == "bm25" and saved["retrieval"]["rrf_k"] == 7
    assert saved["generation"]["max_new_tokens"] == 6 and saved["generation"]["snap"] is False
    again = tmp_path / "again.parquet"
    cli("--config", str(tmp_path / "first.config.json"), "--out", str(again))  # --out given: it wins
    rerun = json.loads((tmp_path / "again.config.json").read_text())
    assert (rerun["retrieval"], rerun["generation"], rerun["questions"]) == (
        saved["retrieval"], saved["generation"], saved["questions"])
    timings = ["retrieve_s", "generate_s"]
    assert pl.read_parquet(again).drop(timings).equals(pl.read_parquet(first).drop(timings))
