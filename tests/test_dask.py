"""The index and answer flows on a real Dask LocalCluster (2 worker processes) give what the thread runner gives."""

from __future__ import annotations

import pytest
import torch

from conftest import write_corpus
from helpers import DOCS, store_content

pytestmark = pytest.mark.dask
pytest.importorskip("prefect_dask")


def test_dask_local_cluster_builds_the_same_store(prefect_harness, tmp_path):
    from flows.index import run_index

    corpus = write_corpus(tmp_path / "docs", DOCS)
    threads = run_index(corpus, tmp_path / "threads", batch_docs=2)
    dask = run_index(corpus, tmp_path / "dask", batch_docs=2, runner="dask", dask_workers=2)
    assert (dask.added, dask.chunks_embedded, dask.shards) == (8, threads.chunks_embedded, 4)
    assert dask.live_chunks == threads.live_chunks

    m1, man1, ch1 = store_content(tmp_path / "threads")
    m2, man2, ch2 = store_content(tmp_path / "dask")
    assert man1 == man2  # same documents, content hashes, chunk counts, embedder and chunking
    assert sorted(ch1) == sorted(ch2) and len(ch1) == m1.live_rows == m2.live_rows
    for cid, (doc, text, vec) in ch1.items():
        doc2, text2, vec2 = ch2[cid]
        assert (doc, text) == (doc2, text2)
        assert torch.equal(vec, vec2), (cid, float((vec - vec2).abs().max()))  # same rows, whatever the process

    # Incremental re-runs work the same on Dask: nothing changed, nothing embedded.
    again = run_index(corpus, tmp_path / "dask", batch_docs=2, runner="dask", dask_workers=2)
    assert (again.unchanged, again.chunks_embedded) == (8, 0)


def test_dask_answer_flow_gives_the_thread_runners_table(prefect_harness, tmp_path):
    import json

    import polars as pl

    from conftest import SMALLEST_GENERATOR
    from flows.answer import run_answer
    from flows.index import run_index

    store = tmp_path / "store"
    run_index(write_corpus(tmp_path / "docs", DOCS), store)
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What is document {i} about?"}) + "\n"
                             for i in range(4)))
    kw = {"k": 2, "generator": SMALLEST_GENERATOR, "max_new_tokens": 8, "batch_questions": 1}
    threads = run_answer(qfile, store, tmp_path / "threads.parquet", **kw)
    dask = run_answer(qfile, store, tmp_path / "dask.parquet", runner="dask", dask_workers=2, **kw)
    assert threads.questions == dask.questions == 4
    cols = ["question_id", "chunk_ids", "no_rag_answer", "rag_answer"]  # four batches, two in flight at a time
    assert pl.read_parquet(tmp_path / "dask.parquet").select(cols).equals(
        pl.read_parquet(tmp_path / "threads.parquet").select(cols))


def test_runner_choice_is_validated():
    from flows.runners import parallel_batches, task_runner

    with pytest.raises(ValueError, match="unknown task runner"):
        task_runner("ray")
    with pytest.raises(ValueError, match="--dask-address needs --runner dask"):
        task_runner("threads", address="tcp://127.0.0.1:8786")
    assert type(task_runner("dask", address="tcp://127.0.0.1:8786")).__name__ == "DaskTaskRunner"
    assert (parallel_batches("threads", 4), parallel_batches("dask", 3)) == (1, 3)
