"""Issue 21, items 3-4 and its faults: a refresh says which document change moved each passage, shows the
changes on a page that filters them, survives a kill at each of its points, and refuses a second refresh of the
same table. Real flows, a real store, the smallest packaged generator, real processes for the kills."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from html import unescape
from pathlib import Path

import polars as pl
import pytest

from conftest import ROOT, SMALLEST_GENERATOR, write_corpus
from helpers import CLI, launch_chromium, needs_chromium, run_cli
from storage.store import open_store

DOCS = {
    "llama.txt": "Llama 3 was trained on over 15 trillion tokens of data from public sources.",
    "paris.txt": "Paris is the capital and most populous city of France.",
    "everest.txt": "Mount Everest is 8,849 metres high, the highest mountain above sea level.",
    "nile.txt": "The Nile is a major north-flowing river in northeastern Africa.",
}
QUESTIONS = [
    ("llama", "How many tokens was Llama 3 trained on?", "15 trillion"),
    ("paris", "What is the capital of France?", "Paris"),
    ("everest", "How high is Mount Everest?", "8,849 metres"),
    ("nile", "Which way does the Nile flow?", "north"),
]
KW = {"generator": SMALLEST_GENERATOR, "max_new_tokens": 10, "k": 1}


def _answered(tmp: Path, **kw) -> tuple[Path, Path, Path]:
    from flows.answer import run_answer
    from flows.index import run_index

    docs = write_corpus(tmp / "docs", DOCS)
    run_index(docs, tmp / "store")
    qfile = tmp / "q.jsonl"
    qfile.write_text("".join(json.dumps({"id": i, "question": q, "answers": [a]}) + "\n" for i, q, a in QUESTIONS))
    run_answer(qfile, tmp / "store", tmp / "results.parquet", **dict(KW, **kw))
    return docs, tmp / "store", tmp / "results.parquet"


@pytest.fixture(scope="module")
def refreshed(prefect_harness, tmp_path_factory):
    """One document changed, one removed, one added; then the table refreshed."""
    from flows.index import run_index
    from flows.refresh import run_refresh

    tmp = tmp_path_factory.mktemp("refresh")
    docs, store, out = _answered(tmp)
    old = pl.read_parquet(out)
    (docs / "paris.txt").write_text("Paris, on the Seine, has been the capital of France since 987.")
    (docs / "everest.txt").unlink()
    (docs / "k2.txt").write_text("Mount K2 is 8,611 metres high, the second highest mountain above sea level.")
    run_index(docs, store)
    return tmp, store, out, old, run_refresh(out)


def test_each_evidence_change_names_the_document_change_that_caused_it(refreshed):
    from tasks.evaluation.evaluate import SAME, VERDICTS

    tmp, store, out, old, r = refreshed
    was, now = old["store_generation"][0], open_store(store).meta().generation
    assert set(pl.read_parquet(out)["store_generation"].to_list()) == {now} and was < now
    manifest = {m["doc_id"]: (m["added_at"], m["changed_at"]) for m in open_store(store).manifest().to_pylist()}
    # The manifest stamps the generation that added each document and the one that committed its content (an
    # index run may commit more than once: its documents, then a compaction, which keeps the stamps).
    assert manifest["paris.txt"][0] <= was < manifest["paris.txt"][1] <= now
    assert was < manifest["k2.txt"][0] == manifest["k2.txt"][1] <= now
    assert manifest["llama.txt"][0] == manifest["llama.txt"][1] <= was
    changes = {c["question_id"]: c for c in pl.read_parquet(r.changes_table).to_dicts()}
    assert changes["paris"]["status"] == "evidence" and changes["paris"]["documents"] == ["changed: paris.txt"]
    assert [p.split(" (", 1)[1] for p in changes["paris"]["left"]] == ["paris.txt, changed)"]
    everest = changes["everest"]
    assert everest["status"] == "evidence" and "removed: everest.txt" in everest["documents"]
    assert [p.split(" (", 1)[1] for p in everest["left"]] == ["everest.txt, removed)"]
    assert [p.split(" (", 1)[1] for p in everest["entered"]] == ["k2.txt, added)"], everest
    assert changes["llama"]["status"] == changes["nile"]["status"] == "same"
    for c in changes.values():
        assert (c["old_generation"], c["new_generation"]) == (was, now)
        if c["status"] != "same":  # every question here has a gold answer: its verdict before and after
            assert {c["old_verdict"], c["new_verdict"]} <= {*VERDICTS, SAME}
            assert c["verdict_changed"] == (c["old_verdict"] != c["new_verdict"])
    assert r.summary["evidence"] == 2 and r.summary["verdicts_changed"] == sum(
        c["verdict_changed"] for c in changes.values())
    assert not out.with_name("results.refresh.json").exists(), "the refresh finished: nothing pending"
    # The page: one card per question that changed, each with what caused it and both answers.
    page = Path(r.changes_report).read_text()
    cards = re.findall(r'<article class="change" data-id="([^"]*)" data-filters="([^"]*)">', page)
    assert sorted(i for i, _ in cards) == ["everest", "paris"]
    assert "because: added: k2.txt; removed: everest.txt" in unescape(page)
    assert "because: changed: paris.txt" in unescape(page)


@needs_chromium
@pytest.mark.browser
def test_the_change_page_filters_in_a_real_browser(refreshed):
    from playwright.sync_api import sync_playwright

    tmp, store, out, old, r = refreshed
    records = pl.read_parquet(r.changes_table).to_dicts()
    listed = [c for c in records if c["status"] != "same" or c["answer_changed"]]
    want = {"answer changed": {c["question_id"] for c in listed if c["answer_changed"]},
            "evidence changed, answer the same": {c["question_id"] for c in listed
                                                  if c["status"] == "evidence" and not c["answer_changed"]},
            "verdict changed": {c["question_id"] for c in listed if c["verdict_changed"]}}
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(Path(r.changes_report).as_uri())
        assert page.locator("#count").inner_text() == f"{len(listed)} of {len(listed)} changes"
        for name, ids in want.items():
            page.select_option("#f-change", name)
            shown = {a.get_attribute("data-id") for a in page.locator("article.change:visible").all()}
            assert shown == ids, name
            assert page.locator("#count").inner_text() == f"{len(ids)} of {len(listed)} changes"
        page.select_option("#f-change", "")
        assert page.locator("article.change:visible").count() == len(listed)
        page.screenshot(path=tmp / "changes-screenshot.png", full_page=True)
        browser.close()
    assert not errors


def test_a_killed_refresh_keeps_the_previous_table_at_every_point_and_the_rerun_reports_the_whole_change(
        prefect_harness, api_env, tmp_path):
    """Kill the refresh at each of its points (before answering, after a kept batch, after the new table but before
    the change table), then run it again: the previous table is in place or kept as a revision, and the re-run's
    change table still names the document that changed."""
    from flows.index import run_index
    from storage.runs.revisions import revisions
    from storage.testing import KILL_ENV

    docs, store, out = _answered(tmp_path, batch_questions=1)
    edits = {"after-revision:1": ("paris.txt", "Paris, on the Seine, is the capital of France."),
             "after-result-part:2": ("nile.txt", "The Nile flows north through Egypt into the Mediterranean Sea."),
             "after-refreshed-table:1": ("paris.txt", "Paris has been the capital of France since the year 987.")}
    for n, (point, (doc, text)) in enumerate(edits.items(), 1):
        before = pl.read_parquet(out)
        (docs / doc).write_text(text)
        run_index(docs, store)
        killed = run_cli("refresh", str(out), "--batch-questions", "1", env=dict(api_env, **{KILL_ENV: point}))
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-2000:])
        kept = revisions(out)
        assert len(kept) == n and pl.read_parquet(kept[-1]).equals(before), point
        if point != "after-refreshed-table:1":
            assert pl.read_parquet(out).equals(before), f"{point}: the previous table is intact"
        done = run_cli("refresh", str(out), "--batch-questions", "1", env=dict(api_env, COLUMNS="250"))
        assert done.returncode == 0, (point, done.stdout[-2000:] + done.stderr[-2000:])
        assert len(revisions(out)) == n, f"{point}: the re-run kept no second revision of the same table"
        changes = pl.read_parquet(out.with_name("results.changes.parquet")).to_dicts()
        assert any(f"changed: {doc}" in c["documents"] for c in changes), (point, changes)
        new = pl.read_parquet(out)
        assert set(new["store_generation"].to_list()) == {open_store(store).meta().generation}
        assert not out.with_name("results.refresh.json").exists()


def test_a_second_refresh_of_the_same_table_is_refused_naming_the_first_or_waits(prefect_harness, api_env,
                                                                               tmp_path):
    """A refresh stalled (alive, holding the table's lock) at its first point: a second one is refused naming it;
    with --wait, the second goes on once the first is gone, and reports the whole change."""
    from flows.index import run_index
    from storage.testing import KILL_ENV

    docs, store, out = _answered(tmp_path)
    (docs / "paris.txt").write_text("Paris, on the Seine, is the capital of France.")
    run_index(docs, store)
    first = subprocess.Popen([*CLI, "refresh", str(out)], cwd=ROOT, env=dict(api_env, **{KILL_ENV:
                             "after-revision:1:stall"}), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pending = out.with_name("results.refresh.json")
        deadline = time.monotonic() + 120
        while not pending.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert pending.exists(), "the first refresh reached its stall point"
        second = run_cli("refresh", str(out), env=dict(api_env, COLUMNS="250"))
        said = " ".join((second.stdout + second.stderr).split())
        assert second.returncode == 2 and f"locked by pid {first.pid}" in said, said[-2000:]
        assert "a refresh is rewriting it" in said and "--wait" in said
        waiting = subprocess.Popen([*CLI, "refresh", str(out), "--wait", "300"], cwd=ROOT,
                                   env=dict(api_env, COLUMNS="250"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        time.sleep(15)  # the second is up and waiting on the lock
        assert waiting.poll() is None
    finally:
        first.kill()
        first.wait()
    stdout, stderr = waiting.communicate(timeout=300)
    assert waiting.returncode == 0, stdout[-2000:] + stderr[-2000:]
    changes = pl.read_parquet(out.with_name("results.changes.parquet")).to_dicts()
    assert [c["documents"] for c in changes if c["question_id"] == "paris"] == [["changed: paris.txt"]]


def test_an_older_table_is_answered_once_and_a_store_of_another_embedder_is_refused(prefect_harness, tmp_path,
                                                                                  minilm):
    """A table written before the evidence columns: its rows are answered again, once, and the refresh says so.
    A store built by another embedder (the same weights, CLS pooling) is refused, naming both embedders."""
    import shutil

    import pyarrow.parquet as pq

    from flows.index import run_index
    from flows.refresh import run_refresh
    from storage.runs.answer_cache import AnswerCache
    from storage.store import EmbedderMismatchError

    docs, store, out = _answered(tmp_path)
    evidence = ("store_generation", "chunk_hashes", "no_rag_key", "rag_key")
    table = pq.read_table(out)
    pq.write_table(table.drop_columns(list(evidence)), out)  # as tables were written before issue 21
    AnswerCache().prune(max_entries=0)  # as on a machine that never answered them: nothing to read them back from
    first = run_refresh(out)
    assert first.unknown_evidence == len(QUESTIONS) and first.answer.from_cache == 0, "all answered again"
    assert all(pl.read_parquet(out)[c].null_count() == 0 for c in evidence)
    again = run_refresh(out)
    assert again.unknown_evidence == 0 and again.answer.from_cache == 2 * len(QUESTIONS), "answered once"

    other = tmp_path / "minilm-cls"
    shutil.copytree(minilm.path, other)
    pool = other / "1_Pooling" / "config.json"
    pool.write_text(json.dumps(json.loads(pool.read_text()) | {"pooling_mode_mean_tokens": False,
                                                               "pooling_mode_cls_token": True}))
    run_index(docs, tmp_path / "cls-store", embedder=str(other))
    before = pl.read_parquet(out)
    with pytest.raises(EmbedderMismatchError, match=r"answered with another embedder") as refused:
        run_refresh(out, store=str(tmp_path / "cls-store"))
    assert "'all-MiniLM-L6-v2'" in str(refused.value) and "minilm-cls'" in str(refused.value), str(refused.value)
    assert pl.read_parquet(out).equals(before), "nothing was written"
