"""The question inbox: new-file detection by name + sha256, the ledger, failed files moved aside; the inbox flow."""

from __future__ import annotations

import json

import polars as pl
import pytest

from conftest import SMALLEST_GENERATOR, write_corpus
from storage.runs.inbox import LEDGER, move_failed, read_ledger, record_answered, scan_inbox

Q1 = json.dumps({"id": "q1", "question": "What is the capital of France?"}) + "\n"


def test_scan_skips_answered_files_by_name_and_hash(tmp_path):
    inbox, results = tmp_path / "inbox", tmp_path / "results"
    assert scan_inbox(inbox, results).new == []  # no inbox yet: nothing to do
    write_corpus(inbox, {"a.jsonl": Q1, "b.csv": "id,question\nb1,Why?\n", "notes.txt": "not questions",
                         ".hidden.jsonl": Q1, "c.jsonl.part": Q1, "failed/old.jsonl": Q1})
    scan = scan_inbox(inbox, results)
    assert [f.name for f in scan.new] == ["a.jsonl", "b.csv"] and scan.ignored == ["notes.txt"]
    a = scan.new[0]
    assert a.out == str(results.resolve() / "a.parquet") and len(a.sha256) == 64

    record_answered(results, a, questions=1)
    scan = scan_inbox(inbox, results)
    assert [f.name for f in scan.new] == ["b.csv"] and scan.already_answered == ["a.jsonl"]
    assert [e["name"] for e in read_ledger(results)] == ["a.jsonl"]

    # A new version under the same name is new again, and its results do not overwrite the old ones.
    (inbox / "a.jsonl").write_text(Q1 + json.dumps({"id": "q2", "question": "And of Italy?"}) + "\n")
    again = {f.name: f for f in scan_inbox(inbox, results).new}
    assert again["a.jsonl"].out.endswith(f"a-{again['a.jsonl'].sha256[:12]}.parquet")

    # A torn ledger line is skipped, not fatal.
    with open(results / LEDGER, "a") as fh:
        fh.write('{"name": "half')
    assert [e["name"] for e in read_ledger(results)] == ["a.jsonl"]


def test_failed_file_is_moved_aside_with_its_error(tmp_path):
    inbox, results = tmp_path / "inbox", tmp_path / "results"
    write_corpus(inbox, {"bad.jsonl": "{nope\n"})
    item = scan_inbox(inbox, results).new[0]
    dest = move_failed(inbox, item, "QuestionFileError: no valid questions")
    assert dest == inbox.resolve() / "failed" / "bad.jsonl" and dest.read_text() == "{nope\n"
    assert not (inbox / "bad.jsonl").exists()
    note = (inbox / "failed" / "bad.jsonl.error.txt").read_text()
    assert "no valid questions" in note and item.sha256 in note
    # The same name failing again keeps the first failure.
    write_corpus(inbox, {"bad.jsonl": "{still nope\n"})
    dest2 = move_failed(inbox, scan_inbox(inbox, results).new[0], "again")
    assert dest2 != dest and dest.exists() and dest2.read_text() == "{still nope\n"
    assert (dest2.parent / f"{dest2.name}.error.txt").read_text().rstrip().endswith("again")
    assert scan_inbox(inbox, results).new == []


def test_inbox_flow_answers_new_files_once_and_moves_failures(prefect_harness, tmp_path):
    from flows.inbox import run_inbox
    from flows.index import run_index

    docs = write_corpus(tmp_path / "docs", {"paris.txt": "Paris is the capital and most populous city of France.",
                                            "rome.txt": "Rome is the capital city of Italy."})
    store, inbox, results = tmp_path / "store", tmp_path / "inbox", tmp_path / "results"
    write_corpus(inbox, {"good.jsonl": Q1 + json.dumps({"id": "q2", "question": "Capital of Italy?"}) + "\n",
                         "broken.csv": "id,text\n1,no question column\n"})
    with pytest.raises(FileNotFoundError, match="no index"):  # no store yet: the inbox is left alone
        run_inbox(inbox, results, store, generator=SMALLEST_GENERATOR)
    assert sorted(p.name for p in inbox.iterdir()) == ["broken.csv", "good.jsonl"]

    run_index(docs, store)
    rep = run_inbox(inbox, results, store, generator=SMALLEST_GENERATOR, k=1, max_new_tokens=4)
    assert rep.answered == [str(results / "good.parquet")] and rep.questions == 2
    assert rep.failed == [str(inbox / "failed" / "broken.csv")]
    note = (inbox / "failed" / "broken.csv.error.txt").read_text()
    assert "QuestionFileError" in note and "no 'question' column" in note.split("\n\n")[1]  # the reason first
    df = pl.read_parquet(results / "good.parquet")
    assert df["question_id"].to_list() == ["q1", "q2"] and df.row(0, named=True)["doc_ids"] == ["paris.txt"]
    assert [e["name"] for e in read_ledger(results)] == ["good.jsonl"]

    again = run_inbox(inbox, results, store, generator=SMALLEST_GENERATOR, k=1, max_new_tokens=4)
    assert (again.answered, again.failed, again.skipped) == ([], [], ["good.jsonl"])


def test_deployments_carry_schedules_and_absolute_parameters(tmp_path, monkeypatch):
    from deployments.serve import build_deployments
    from tasks.config import GenerationConfig, RetrievalConfig, to_dict

    monkeypatch.chdir(tmp_path)
    reindex, inbox = build_deployments("docs", "store", "in", "res", retrieval=RetrievalConfig(k=2, rerank_depth=7),
                                       generation=GenerationConfig(generator=SMALLEST_GENERATOR))
    assert (reindex.name, inbox.name) == ("reindex", "inbox")
    assert reindex.entrypoint == "flows.index.index_flow" and inbox.entrypoint == "flows.inbox.inbox_flow"
    # The reindex run refreshes the inbox's tables when it changed a document (issue 21, item 5).
    assert reindex.parameters == {"docs_dir": str(tmp_path / "docs"), "store": str(tmp_path / "store"),
                                  "refresh_results": str(tmp_path / "res")}
    assert inbox.parameters == {"inbox": str(tmp_path / "in"), "results": str(tmp_path / "res"),
                                "store": str(tmp_path / "store"),
                                "retrieval": to_dict(RetrievalConfig(k=2, rerank_depth=7)),
                                "generation": to_dict(GenerationConfig(generator=SMALLEST_GENERATOR))}
    assert (tmp_path / "in").is_dir() and (tmp_path / "res").is_dir()
    assert [s.schedule.cron for s in reindex.schedules] == ["0 2 * * *"]
    assert [s.schedule.interval.total_seconds() for s in inbox.schedules] == [300]
    by_hand = build_deployments("docs", "store", "in", "res", cron="", inbox_every=0)
    assert [d.schedules for d in by_hand] == [[], []]


def test_scan_refuses_links_out_of_the_inbox(tmp_path):
    """Issue 10, finding 1: a link dropped into the inbox never pulls a file from elsewhere into a run."""
    import os

    inbox, results = tmp_path / "inbox", tmp_path / "results"
    secret = write_corpus(tmp_path / "elsewhere", {"secret.jsonl": Q1}) / "secret.jsonl"
    write_corpus(inbox, {"a.jsonl": Q1})
    (inbox / "out.jsonl").symlink_to(secret)
    (inbox / "in.jsonl").symlink_to(inbox / "a.jsonl")
    (inbox / "loop.jsonl").symlink_to(inbox / "loop.jsonl")
    os.mkfifo(inbox / "fifo.jsonl")  # hashing it would block the scan forever
    scan = scan_inbox(inbox, results)
    assert [f.name for f in scan.new] == ["a.jsonl", "in.jsonl"]
    assert [r.split(" (")[0] for r in scan.refused] == [
        "fifo.jsonl: not a regular file", "loop.jsonl: symlink loop", "out.jsonl: symlink outside the folder"]
