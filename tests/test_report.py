"""The answer report's logic on constructed cases: word diff, support and gold spans, JSON embedding, old tables.

No models: rows are written by hand, so every expectation below is worked out from the inputs.
"""

from __future__ import annotations

import json
import re
import subprocess

from conftest import ROOT
from helpers import CLI
from storage.reports.html import render_answer_report, report_path, script_json
from storage.runs.results import write_results
from tasks.reporting.cards import build_report
from tasks.reporting.marks import gold_spans, segments, support_in, support_spans, tokens, word_diff, words
from tasks.text import content_tokens, support

LLAMA = "Llama 3 was pretrained on over 15 trillion tokens of data from publicly available sources."


def _texts(text: str, spans: list[tuple[int, int]]) -> list[str]:
    return [text[s:e] for s, e in spans]


# ---------------------------------------------------------------- word diff
def test_word_diff_removed_and_added_words():
    assert word_diff("I don't know.", "15 trillion tokens") == [("-", "I don't know."), ("+", "15 trillion tokens")]
    assert word_diff("over 2 trillion tokens", "over 15 trillion tokens") == [
        ("=", "over"), ("-", "2"), ("+", "15"), ("=", "trillion tokens")]
    assert word_diff("Paris", "Paris, France") == [("=", "Paris,"), ("+", "France")]
    assert word_diff("", "Rome") == [("+", "Rome")] and word_diff("Rome", "") == [("-", "Rome")]


def test_word_diff_ignores_what_answers_differ_ignores():
    # Case and punctuation are not a change (tasks.evaluation.metrics.answers_differ says the same); kept words are
    # shown
    # as the RAG answer wrote them.
    assert word_diff("15 Trillion.", "15 trillion") == [("=", "15 trillion")]


# ---------------------------------------------------------------- support and gold spans
def test_support_span_is_the_shortest_window_with_every_supported_token():
    assert _texts(LLAMA, support_spans("15 trillion tokens", LLAMA)) == ["15 trillion tokens"]
    # "the" and "of" are stopwords: the answer's content tokens are 15, trillion, tokens, data.
    assert _texts(LLAMA, support_spans("the 15 trillion tokens of data", LLAMA)) == ["15 trillion tokens of data"]
    # "Llama" occurs once: of its windows to a "tokens", the shortest wins.
    text = "Llama 3 used 15 trillion tokens. tokens"
    assert _texts(text, support_spans("Llama tokens", text)) == ["Llama 3 used 15 trillion tokens."]
    text = "tokens. Llama 3 used 15 trillion tokens"
    assert _texts(text, support_spans("Llama tokens", text)) == ["tokens. Llama"]


def test_scattered_tokens_are_marked_word_by_word_and_none_means_no_span():
    text = "Meta released it " + "filler " * 30 + "in April 2024 to everyone."
    assert _texts(text, support_spans("Meta 2024", text)) == ["Meta", "2024"]  # a 35-word window is not a span
    assert support_spans("Paris", LLAMA) == []
    assert support_spans("the of", LLAMA) == []  # an answer with no content tokens supports nothing visible


def test_marked_words_are_exactly_what_support_counts():
    cases = [("15 trillion tokens", LLAMA), ("Llama 2, trained on 2 trillion tokens", LLAMA),
             ("publicly available data sources", LLAMA), ("Rome", LLAMA)]
    for answer, passage in cases:
        marked = {n for s, e in support_spans(answer, passage) for n, _, _ in words(passage[s:e])}
        toks = content_tokens(answer)
        assert sum(t in marked for t in toks) / len(toks) == support(answer, passage), answer
        assert support_in(toks, tokens(passage)) == support(answer, passage)


def test_gold_spans_every_occurrence_at_token_level():
    text = "The Thames flows through London; the thames is tidal. Thames-side."
    assert _texts(text, gold_spans(["the Thames"], text)) == ["Thames", "thames"]  # article dropped, case ignored
    assert _texts(LLAMA, gold_spans(["15 trillion", "over 15 trillion tokens", "16 trillion"], LLAMA)) == [
        "over 15 trillion tokens", "15 trillion"]
    assert gold_spans([""], LLAMA) == [] and gold_spans([], LLAMA) == []


def test_segments_cut_at_every_mark_boundary():
    got = segments("abcdef", {"support": [(1, 4)], "gold": [(3, 5)]})
    assert got == [("a", frozenset()), ("bc", {"support"}), ("d", {"support", "gold"}), ("e", {"gold"}),
                   ("f", frozenset())]


# ---------------------------------------------------------------- the report's data and page
def _row(qid: str, question: str, a0: str, a1: str, texts: list[str], golds=(), **extra) -> dict:
    return {"question_id": qid, "question": question, "source": "q.jsonl", "gold_answers": list(golds),
            "chunk_ids": [f"c{i}" for i in range(len(texts))], "doc_ids": [f"d{i}.txt" for i in range(len(texts))],
            "scores": [0.0328 - i / 1000 for i in range(len(texts))], "chunk_texts": texts, "no_rag_answer": a0,
            "rag_answer": a1, "rag_raw": a1, "answers_differ": a0.lower() != a1.lower(), "generator": "g",
            "embedder": "e", "retriever": "hybrid", "k": len(texts), "retrieve_s": 0.01, "generate_s": 0.5, **extra}


def test_labels_from_the_card_alone():
    rows = [
        _row("good", "How many tokens?", "I don't know", "15 trillion tokens", [LLAMA], ["15 trillion"]),
        _row("gen", "How many tokens?", "2 trillion", "Meta", [LLAMA, "Meta made Llama."], ["15 trillion"]),
        _row("ret", "Capital of Peru?", "Lima", "Meta", ["Meta made Llama."], ["Lima"]),
        _row("same", "How many tokens?", "15 trillion", "15 Trillion", [LLAMA], ["15 trillion"]),
    ]
    cards = {c["id"]: c for c in build_report(rows)["cards"]}
    assert (cards["good"]["v"], cards["good"]["dg"]) == ("grounded", None)
    assert (cards["gen"]["v"], cards["gen"]["dg"]) == ("misled", "generator") and "rank 1" in cards["gen"]["why"]
    assert (cards["ret"]["v"], cards["ret"]["dg"]) == ("misled", "retriever")
    assert (cards["same"]["v"], cards["same"]["dg"]) == ("same", None)
    for r in rows:  # faithfulness: the RAG answer's support by all its passages together, as eval computes it
        assert cards[r["question_id"]]["faith"] == round(support(r["rag_answer"], "\n".join(r["chunk_texts"])), 3)
    s = build_report(rows)["summary"]
    assert (s["questions"], s["changed"], s["grounded"], s["misled"], s["fail_generator"], s["fail_retriever"]) == (
        4, 3, 1, 2, 1, 1)
    assert s["rag_em"] == 0.25 and s["no_rag_em"] == 0.5  # with: "15 Trillion"; without: "15 trillion", "Lima"


def test_eval_labels_win_and_old_tables_without_new_columns_render():
    old = _row("q1", "How many tokens?", "no idea", "15 trillion tokens", [LLAMA], ["15 trillion"])
    rep = build_report([old], labels={"q1": {"verdict": "perturbed", "failure_stage": "chunker",
                                             "failure_detail": "split across chunks"}})
    (card,) = rep["cards"]
    assert (card["v"], card["dg"], card["why"]) == ("perturbed", "chunker", "split across chunks")
    p = card["p"][0]
    assert p["d"] is None and p["pg"] is None and p["cite"] is False  # no dense_scores / pages / citations
    assert "15 trillion tokens" in render_answer_report(rep)


def test_a_table_written_before_dense_scores_reads_and_renders(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from storage.runs.results import RESULT_SCHEMA, read_results

    row = _row("q1", "How many tokens?", "no idea", "15 trillion tokens", [LLAMA], ["15 trillion"])
    old = pa.Table.from_pylist([row], schema=RESULT_SCHEMA).drop_columns(["dense_scores"])
    pq.write_table(old, tmp_path / "old.parquet")
    rows = read_results(tmp_path / "old.parquet").to_pylist()
    assert "dense_scores" not in rows[0]
    page = render_answer_report(build_report(rows))
    assert '"d":null' in page and "15 trillion tokens" in page


def test_dense_scores_pages_and_citations_when_present():
    row = _row("q1", "How many tokens?", "no idea", "15 trillion", [LLAMA, "Other text."],
               dense_scores=[0.61234, float("nan")], page_starts=[4, None], page_ends=[5, None],
               citations=[{"passage": 1, "chunk_id": "c0", "doc_id": "d0.txt", "page_start": 4, "page_end": 5,
                           "inferred": False}])
    p0, p1 = build_report([row])["cards"][0]["p"]
    assert (p0["d"], p0["pg"], p0["cite"], p0["inf"]) == (0.6123, [4, 5], True, False)
    assert (p1["d"], p1["pg"], p1["cite"]) == (None, None, False)  # NaN (chunk gone) is JSON null, not NaN


def test_embedded_json_cannot_close_its_script_tag():
    hostile = "</script><script>window.x=1</script><!-- & \u2028"
    rows = [_row("<q>", hostile, hostile, hostile, [f"<img src=x onerror=alert(1)> {hostile}"])]
    page = render_answer_report(build_report(rows, title="<b>t</b>.parquet"))
    # The page's own tags only: two <script> elements, and no user text anywhere as markup.
    assert page.count("<script") == 2 and page.count("</script>") == 2
    assert "<img" not in page and "<b>t</b>" not in page and "&lt;b&gt;t&lt;/b&gt;.parquet" in page
    blob = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S).group(1)
    assert json.loads(blob)["cards"][0]["q"] == hostile  # and it round-trips exactly
    assert "<" not in script_json({"a": "</script>"}) and json.loads(script_json({"a": "<&>"})) == {"a": "<&>"}


def test_offsets_are_utf16_for_the_browser_after_an_astral_character():
    text = "🦙 Llama 3: 15 trillion tokens"
    page = render_answer_report(build_report([_row("q", "?", "x", "15 trillion tokens", [text])]))
    blob = re.search(r'id="report-data">(.*?)</script>', page, re.S).group(1)
    (s, e), = json.loads(blob)["cards"][0]["p"][0]["hs"]
    assert text.encode("utf-16-le")[2 * s : 2 * e].decode("utf-16-le") == "15 trillion tokens"


def test_answers_markdown_links_the_report_and_stays_one_table(tmp_path):
    from storage.reports.markdown import answers_markdown
    from storage.runs.results import ResultRow

    rows = [ResultRow.from_record(_row("q|1", "a\n| b", "<script>x</script>", "`y`", [LLAMA]))]
    md = answers_markdown(rows, report=str(tmp_path / "we(ird) [x].report.html"))
    link = md.splitlines()[0]
    assert "(file://" in link and "we%28ird%29%20%5Bx%5D.report.html)" in link  # the URL cannot end early
    table = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len(table) == 3 and "<script>" not in md


def test_show_prints_user_text_literally(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [_row("q1", "What is [link=http://evil.example]this[/link] [bold]?", "[red]no[/]", "15 trillion tokens",
                 [LLAMA, "[/] stray markup \\"], ["15 trillion"], page_starts=[4, None], page_ends=[5, None],
                 citations=[{"passage": 1, "chunk_id": "c0", "doc_id": "d0.txt", "page_start": 4, "page_end": 5,
                             "inferred": False}]),
            _row("q2", "Second?", "a", "b", ["c"], page_starts=[None], page_ends=[None], citations=[])]
    results = write_results(tmp_path / "res.parquet", rows, {"flow": "answer"})
    assert report_path(results) == tmp_path / "res.report.html"
    pq.write_table(pa.Table.from_pylist(rows), results)  # with issue 12's page and citation columns

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*CLI, "show", str(results), *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120, env={"COLUMNS": "200", "PATH": "/usr/bin",
                                                                               "PYTHONPATH": str(ROOT)})

    card = run("q1")
    assert card.returncode == 0, card.stderr
    out = card.stdout
    assert "What is [link=http://evil.example]this[/link] [bold]?" in out and "[red]no[/]" in out
    assert "15 trillion tokens" in out and "[/] stray markup \\\n" in out and "gold: 15 trillion" in out
    assert "markup \\\\" not in out  # one backslash, as written (rich's escape() would double a trailing one)
    assert "verdict: grounded" in out
    assert "[1] d0.txt pp. 4–5 · cosine" in out and "support 1.00 cited" in out
    summary = run()
    assert summary.returncode == 0 and "answers changed by retrieval" in summary.stdout and "q2" in summary.stdout
    missing = run("nope")
    assert missing.returncode == 2 and "no question 'nope'" in missing.stderr
    bad = subprocess.run([*CLI, "show", str(tmp_path / "none.parquet")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "none.parquet: no such result table" in bad.stderr
