"""Issue 21, items 1-2: an answer is generated once per key and read back byte for byte; every row records its
evidence. Real flows, a real store, the smallest packaged generator; the cache is the real one, on disk."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import polars as pl
import pytest

from conftest import SMALLEST_GENERATOR, write_corpus
from storage.runs.answer_cache import AnswerCache
from storage.store import open_store

QUESTIONS = ["How many tokens was Llama 3 trained on?", "What is the capital of France?", "How high is Everest?"]
ANSWER_COLUMNS = ["question_id", "no_rag_answer", "rag_answer", "rag_raw", "no_rag_key", "rag_key"]


def test_entries_round_trip_corrupt_ones_are_dropped_and_the_cache_is_bounded(tmp_path):
    cache = AnswerCache(tmp_path / "c", max_entries=3)
    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(5)]
    for i, k in enumerate(keys):
        cache.put(k, f"answer {i} — ünïcode")
        os.utime(cache.path(k), ns=(i * 10**9, i * 10**9))  # written in key order, oldest first
    assert cache.get(keys[3]) == "answer 3 — ünïcode" and cache.hits == 1
    # A flipped byte in an entry: never served, deleted, counted; the next run generates that answer again.
    path = cache.path(keys[4])
    path.write_bytes(path.read_bytes().replace(b"answer 4", b"answer 5"))
    assert cache.get(keys[4]) is None and not path.exists() and cache.dropped == 1
    (path.parent / path.name).write_text("{not json")
    assert cache.get(keys[4]) is None and cache.dropped == 2
    # Least recently used first: key 3 was read (touched) just now, keys 0 and 1 are the oldest.
    assert cache.prune() == 1 and {p.stem for p in cache.entries()} == {keys[1], keys[2], keys[3]}
    assert cache.prune(max_entries=1) == 2 and [p.stem for p in cache.entries()] == [keys[3]]
    with pytest.raises(ValueError, match="not an answer key"):
        cache.get("../../etc/passwd")


def _indexed(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Three one-line documents indexed into a store, and the three questions in a JSONL file."""
    from flows.index import run_index

    docs = write_corpus(tmp_path / "docs", {
        "llama.txt": "Llama 3 was trained on over 15 trillion tokens of data from public sources.",
        "paris.txt": "Paris is the capital and most populous city of France.",
        "everest.txt": "Mount Everest is 8,849 metres high, the highest mountain above sea level.",
    })
    run_index(docs, tmp_path / "store")
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps({"id": f"q{i}", "question": q}) + "\n" for i, q in enumerate(QUESTIONS)))
    return docs, tmp_path / "store", qfile


def test_a_second_run_reads_every_answer_and_a_changed_k_reuses_every_no_rag_answer(prefect_harness, tmp_path):
    from flows.answer import run_answer

    docs, store, qfile = _indexed(tmp_path)
    kw = {"generator": SMALLEST_GENERATOR, "max_new_tokens": 12}
    cache = AnswerCache()
    assert cache.root == Path(os.environ["RAGBATCH_ANSWER_CACHE_DIR"]).resolve()  # this test's own, empty

    first = run_answer(qfile, store, tmp_path / "first.parquet", k=2, **kw)
    assert first.from_cache == 0 and first.new_tokens > 0 and len(cache.entries()) == 6
    t0 = time.perf_counter()
    second = run_answer(qfile, store, tmp_path / "second.parquet", k=2, **kw)
    assert second.from_cache == 6 and second.new_tokens == 0 and second.prompt_tokens == 0
    a, b = (pl.read_parquet(tmp_path / f"{n}.parquet") for n in ("first", "second"))
    assert a.select(ANSWER_COLUMNS).equals(b.select(ANSWER_COLUMNS)), "read back byte for byte"
    assert json.loads((tmp_path / "second.config.json").read_text())["answers_from_cache"] == 6
    print(f"\nsecond run, every answer from the cache: {time.perf_counter() - t0:.1f}s")

    # Another k: the no-RAG prompts are the same (every one reused), the RAG prompts change.
    k1 = run_answer(qfile, store, tmp_path / "k1.parquet", k=1, **kw)
    assert k1.from_cache == 3
    fresh = run_answer(qfile, store, tmp_path / "k1-fresh.parquet", k=1, use_cache=False, **kw)
    assert fresh.from_cache == 0
    c, f = (pl.read_parquet(tmp_path / f"{n}.parquet") for n in ("k1", "k1-fresh"))
    assert c.select(ANSWER_COLUMNS).equals(f.select(ANSWER_COLUMNS)), "cached answers equal generated ones"
    assert c["no_rag_key"].to_list() == a["no_rag_key"].to_list()
    assert set(c["rag_key"].to_list()).isdisjoint(a["rag_key"].to_list())

    # Every row records its evidence: the store generation, each passage's content hash, both answer keys.
    gen = open_store(store).meta().generation
    for row in c.to_dicts():
        assert row["store_generation"] == gen
        assert row["chunk_hashes"] == [hashlib.sha256(t.encode()).hexdigest() for t in row["chunk_texts"]]
        assert len(row["no_rag_key"]) == len(row["rag_key"]) == 64 and row["no_rag_key"] != row["rag_key"]


def test_tables_written_before_the_evidence_columns_still_open(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from storage.runs.results import RESULT_SCHEMA, ResultRow, read_results

    old_schema = pa.schema([f for f in RESULT_SCHEMA if f.name not in
                            ("store_generation", "chunk_hashes", "no_rag_key", "rag_key")])
    row = {f.name: None for f in old_schema} | {"question_id": "q1", "question": "Q?", "answers_differ": False}
    pq.write_table(pa.Table.from_pylist([row], schema=old_schema), tmp_path / "old.parquet")
    (back,) = [ResultRow.from_record(r) for r in read_results(tmp_path / "old.parquet").to_pylist()]
    assert back.question_id == "q1" and back.store_generation is None and back.rag_key is None


def test_refresh_regenerates_exactly_the_answers_whose_evidence_changed(prefect_harness, api_env, tmp_path):
    """Issue 21, item 3: one document changes; refresh re-generates exactly the answers whose prompt changed,
    every other row stays byte-identical, the refreshed table equals a fresh run, the old one is kept."""
    from flows.answer import run_answer
    from flows.index import run_index
    from flows.refresh import run_refresh
    from helpers import invoke, run_cli

    docs, store, qfile = _indexed(tmp_path)
    kw = {"generator": SMALLEST_GENERATOR, "max_new_tokens": 12, "k": 1}
    out = tmp_path / "results.parquet"
    run_answer(qfile, store, out, **kw)
    old = pl.read_parquet(out)

    (docs / "paris.txt").write_text("Paris, on the Seine, has been the capital of France since 987.")
    run_index(docs, store)
    refreshed = run_refresh(out)
    new = pl.read_parquet(out)
    changed = [o["chunk_hashes"] != n["chunk_hashes"] for o, n in zip(old.to_dicts(), new.to_dicts(), strict=True)]
    assert sum(changed) >= 1, "the changed document is some question's top passage"
    a = refreshed.answer
    assert 2 * a.questions - a.from_cache == sum(changed), "exactly the changed prompts were generated"
    assert refreshed.summary["evidence"] == sum(changed) and refreshed.summary["same"] == 3 - sum(changed)
    for o, n, c in zip(old.to_dicts(), new.to_dicts(), changed, strict=True):
        assert (o["rag_key"] != n["rag_key"]) == c and o["no_rag_key"] == n["no_rag_key"]
        if not c:
            assert {k: o[k] for k in ANSWER_COLUMNS} == {k: n[k] for k in ANSWER_COLUMNS}
        assert n["store_generation"] == o["store_generation"] + 1
    # The refreshed table equals a fresh run against the same generation, answers and evidence.
    run_answer(qfile, store, tmp_path / "fresh.parquet", use_cache=False, **kw)
    cols = [*ANSWER_COLUMNS, "chunk_ids", "chunk_hashes", "store_generation"]
    assert new.select(cols).equals(pl.read_parquet(tmp_path / "fresh.parquet").select(cols))
    # The previous table is kept; the change table names what left and entered.
    assert pl.read_parquet(refreshed.revision).equals(old)
    moved = [c for c in pl.read_parquet(refreshed.changes_table).to_dicts() if c["status"] == "evidence"]
    assert all(any("paris.txt" in p for p in c["left"] + c["entered"]) for c in moved)

    shown = invoke("show", str(out), "--changes", columns=300)
    assert shown.exit_code == 0 and "paris.txt" in shown.output and "unchanged" in shown.output, shown.output
    # Question files gone: the table's own questions are refreshed, and the CLI says so.
    qfile.unlink()
    proc = run_cli("refresh", str(out), env=dict(api_env, COLUMNS="250"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "question files are gone" in proc.stderr and "answers re-generated" in proc.stdout
    assert pl.read_parquet(out).select(ANSWER_COLUMNS).equals(new.select(ANSWER_COLUMNS))


def test_cache_prune_from_the_command_line(tmp_path):
    from helpers import invoke

    cache = AnswerCache()
    for i in range(4):
        cache.put(hashlib.sha256(str(i).encode()).hexdigest(), f"a{i}")
    out = invoke("cache", "prune", "--max-entries", "1")
    assert out.exit_code == 0 and "3 entries pruned, 1 kept" in " ".join(out.output.split()), out.output
    assert invoke("cache", "vacuum").exit_code == 2


def test_a_reindex_that_changes_a_document_refreshes_the_inbox_tables(prefect_harness, tmp_path):
    """Issue 21, item 5: the reindex deployment's flow refreshes every table of the inbox's ledger when it changed
    a document (each refresh a flow run with its change artifact), and nothing when it changed nothing."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterName,
    )

    from flows.inbox import run_inbox
    from flows.index import run_index

    docs, store, qfile = _indexed(tmp_path)
    inbox, results = tmp_path / "inbox", tmp_path / "results"
    inbox.mkdir()
    (inbox / "questions.jsonl").write_bytes(qfile.read_bytes())
    run_inbox(inbox, results, store, generator=SMALLEST_GENERATOR, k=1, max_new_tokens=8)
    table = results / "questions.parquet"
    before = pl.read_parquet(table)

    same = run_index(docs, store, refresh_results=str(results))
    assert same.refreshed == [] and pl.read_parquet(table).equals(before), "nothing changed, nothing refreshed"
    (docs / "paris.txt").write_text("Paris, on the Seine, has been the capital of France since 987.")
    changed = run_index(docs, store, refresh_results=str(results))
    assert changed.refreshed == [str(table.resolve())]
    after = pl.read_parquet(table)
    assert set(after["store_generation"].to_list()) == {before["store_generation"][0] + 1}
    assert after.select(["question_id", "no_rag_answer"]).equals(before.select(["question_id", "no_rag_answer"]))
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_="refresh-questions-")))
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["refresh-changes"])),
                                     flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[r.id for r in runs])))
    assert len(runs) == 1 and len(arts) == 1, "one refresh flow run, with its change artifact"
