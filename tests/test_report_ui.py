"""RESULTS.report.html of a real answer run, opened from file:// in a real browser.

A real Prefect test server, the packaged models (the fast generator), a real store on disk, then Debian's chromium
through Playwright (as tests/test_ui.py). One run serves every check: a known question's two answers and marked
spans, the "changed only" filter, hostile text in a question and a document, the Prefect artifacts. The
screenshot is saved in the test's tmp dir and copied to ``out/`` (ignored by git).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request

import pytest

from conftest import ROOT, SMALLEST_GENERATOR, write_corpus
from helpers import CLI, launch_chromium, needs_chromium

INJECT_Q = "</script><script>window.x=1</script> What does the gallery page show?"
INJECT_DOC = 'The gallery page shows <img src=x onerror="window.y=1"> a picture of the harbour at night.'
QUESTIONS = [
    {"id": "paris", "question": "What is the capital of France?", "answers": ["Paris"]},
    {"id": "rome", "question": "What is the capital city of Italy?", "answers": ["Rome"]},
    {"id": "llama", "question": "How many tokens was Llama 3 pretrained on?", "answers": ["15 trillion"]},
    {"id": "nile", "question": "Which river flows north through northeastern Africa?", "answers": ["Nile"]},
    {"id": "inject", "question": INJECT_Q},
]


@pytest.fixture(scope="module")
def answered(prefect_harness, tmp_path_factory):
    from flows.answer import run_answer
    from flows.index import run_index

    tmp = tmp_path_factory.mktemp("report")
    docs = write_corpus(tmp / "docs", {
        "paris.txt": "Paris is the capital and most populous city of France.",
        "rome.txt": "Rome is the capital city of Italy.",
        "nile.txt": "The Nile is a major north-flowing river in northeastern Africa.",
        "llama3.txt": "Llama 3 was pretrained on over 15 trillion tokens of data from publicly available sources.",
        "gallery.txt": INJECT_DOC,
    })
    qfile = tmp / "questions.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    run_index(docs, tmp / "store")
    report = run_answer(qfile, tmp / "store", tmp / "results.parquet", k=2, generator=SMALLEST_GENERATOR,
                        max_new_tokens=12)
    return tmp, report


def test_report_file_beside_the_table_and_the_prefect_artifacts(answered):
    from prefect.settings import PREFECT_API_URL

    tmp, report = answered
    assert report.report == str(tmp / "results.report.html") and (tmp / "results.report.html").stat().st_size > 5000
    rows = {r.question_id: r.to_record() for r in report.rows}
    # Hybrid ranks by RRF; the table also keeps each passage's dense cosine: the score exact dense search gives it.
    from tasks.retrieval.search import search

    dense, _ = search(str(tmp / "store"), [q["question"] for q in QUESTIONS], k=5, retriever="dense")
    for q, d in zip(QUESTIONS, dense, strict=True):
        r, cosine = rows[q["id"]], dict(zip(d.chunk_ids, d.scores, strict=True))
        assert r["scores"][0] < 0.05 and len(r["dense_scores"]) == len(r["chunk_ids"]) == 2  # RRF scores
        for cid, got in zip(r["chunk_ids"], r["dense_scores"], strict=True):
            assert abs(got - cosine[cid]) < 1e-4, (q["id"], cid, got, cosine[cid])
    body = json.dumps({"sort": "CREATED_DESC", "limit": 200}).encode()  # the newest first: ours among them
    req = urllib.request.Request(f"{PREFECT_API_URL.value()}/artifacts/filter", body,
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        arts = [a for a in json.loads(resp.read()) if a.get("key") in ("answers", "answers-summary")]
    # Other tests' answer runs publish "answers" artifacts on the same test server: find this run's by its link.
    link = f"file://{tmp}/results.report.html"
    md = next((a for a in arts if a["key"] == "answers" and link in a["data"]), None)
    assert md is not None, [a["data"][:160] for a in arts if a["key"] == "answers"]
    table = next(a for a in arts if a["key"] == "answers-summary" and a["flow_run_id"] == md["flow_run_id"])
    cells = {row["measure"]: row["value"] for row in json.loads(table["data"])}
    assert cells["questions"] == "5" and cells["answers changed by retrieval"] == str(report.differ)


@needs_chromium
@pytest.mark.browser
def test_report_in_a_real_browser(answered):
    from playwright.sync_api import expect, sync_playwright

    from tasks.reporting.marks import gold_spans, support_spans

    tmp, report = answered
    rows = {r.question_id: r.to_record() for r in report.rows}
    known = rows["paris"]
    passage = known["chunk_texts"][0]
    assert known["doc_ids"][0] == "paris.txt"
    want_support = [passage[s:e] for s, e in support_spans(known["rag_answer"], passage)]
    assert want_support, f"the fast generator's RAG answer {known['rag_answer']!r} has no support in {passage!r}"
    assert [passage[s:e] for s, e in gold_spans(["Paris"], passage)] == ["Paris"]

    shots = tmp / "screenshots"
    shots.mkdir()
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((tmp / "results.report.html").as_uri())
        page.locator("article.card").first.wait_for(timeout=30_000)
        assert page.locator("article.card").count() == 5
        assert page.locator("#count").inner_text() == "5 of 5 questions"

        card = page.locator("article.card[data-id='paris']")
        assert card.locator(".question").inner_text() == known["question"]
        assert card.locator(".answer-no-rag").inner_text() == known["no_rag_answer"].strip()
        assert card.locator(".answer-rag").inner_text() == known["rag_answer"].strip()
        first = card.locator("li.passage").first
        assert "paris.txt" in first.locator(".pmeta").inner_text() and "cosine " in first.inner_text()
        marks = first.locator("mark")
        got_support = "".join(m.inner_text() for m in marks.all() if "support" in (m.get_attribute("class") or ""))
        assert got_support == "".join(want_support)
        gold = [m.inner_text() for m in marks.all() if "gold" in (m.get_attribute("class") or "")]
        assert "".join(gold) == "Paris"

        # Hostile text is shown as text and nothing in it ran.
        bad = page.locator("article.card[data-id='inject']")
        assert bad.locator(".question").inner_text() == INJECT_Q
        assert page.evaluate("typeof window.x") == "undefined" and page.evaluate("typeof window.y") == "undefined"
        assert page.locator("#cards img, #cards script").count() == 0
        if "gallery.txt" in rows["inject"]["doc_ids"]:
            assert '<img src=x onerror="window.y=1">' in bad.inner_text()

        page.screenshot(path=shots / "report-screenshot.png", full_page=True)
        # "changed only": exactly the rows whose answers differ.
        page.locator("#f-changed").check()
        changed = sum(r["answers_differ"] for r in rows.values())
        assert page.locator("#count").inner_text() == f"{changed} of 5 questions"
        assert page.locator("article.card").count() == changed
        assert page.locator("article.card .badge.changed").count() == changed
        page.locator("#f-changed").uncheck()
        page.locator("#f-text").fill("FLOWS NORTH")  # only the Nile question says it
        expect(page.locator("#count")).to_have_text("1 of 5 questions", timeout=5000)  # (typing is debounced)
        assert page.locator("article.card").first.get_attribute("data-id") == "nile"
        browser.close()
    assert errors == [] and all(u.startswith("file://") for u in requests), (errors, requests)
    out = ROOT / "out"
    out.mkdir(exist_ok=True)
    shot = shots / "report-screenshot.png"
    assert shot.stat().st_size > 10_000
    shutil.copy(shot, out / shot.name)


def test_the_cli_ends_by_printing_the_report_path(answered, api_env):
    """`ragbatch answer` (and `demo`, through the same lines) prints the report's path last; `show` reads it."""
    tmp, _ = answered
    qfile = tmp / "one.jsonl"
    qfile.write_text(json.dumps({"id": "x", "question": "What is the capital of Italy?"}) + "\n")
    out = tmp / "cli" / "res.parquet"
    run = subprocess.run([*CLI, "answer", str(qfile), "--store", str(tmp / "store"),
                          "--out", str(out), "-k", "1", "--generator", SMALLEST_GENERATOR, "--max-new-tokens", "4"],
                         cwd=ROOT, env=dict(api_env, COLUMNS="400"), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip().splitlines()[-1] == f"report: {tmp / 'cli' / 'res.report.html'}"
    assert (tmp / "cli" / "res.report.html").stat().st_size > 5000
    assert "(cosine 0." in run.stdout  # the top document's cosine, not its RRF score
