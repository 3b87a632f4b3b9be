"""The evaluation flow end to end on a small SQuAD-shaped data set: tables, Markdown, HTML and plots."""

from __future__ import annotations

import json
import re
from html import escape as html_escape

import polars as pl

from conftest import SMALLEST_GENERATOR

PARAS = [
    ("Rivers", "The Seine flows through Paris. The Thames flows through London. The Tiber flows through Rome.",
     [("r1", "Which river flows through London?", "Thames")]),
    ("Mountains", "Mount Everest is 8,849 metres high. K2 is the second highest mountain on Earth.",
     [("m1", "Which is the second highest mountain?", "K2")]),
    ("Food", "Bananas are yellow. Tomatoes are red fruit often mistaken for vegetables.",
     [("f1", "What colour are bananas?", "yellow")]),
]


def _squad_json(path):
    data = []
    for title, context, qas in PARAS:
        data.append({"title": title, "paragraphs": [{"context": context, "qas": [
            {"id": qid, "question": q, "answers": [{"text": a, "answer_start": context.index(a)}]}
            for qid, q, a in qas]}]})
    path.write_text(json.dumps({"version": "1.1", "data": data}))
    return path


def test_eval_flow_writes_every_report(prefect_harness, tmp_path):
    from flows.evaluate import run_eval

    ds = _squad_json(tmp_path / "tiny.json")
    rep = run_eval(str(ds), tmp_path / "store", tmp_path / "report", ks=[1, 2], context_k=2,
                   generator=SMALLEST_GENERATOR, max_new_tokens=8, retriever="dense")
    s = rep.summary
    assert s["questions"] == 3 and 0.0 <= s["recall@1"] <= s["recall@2"] <= 1.0
    assert s["recall@2"] == 1.0  # three paragraphs, two retrieved: a correct retriever finds each one
    for name in ("questions", "summary_md", "html", "recall_png", "failures_png", "summary_json"):
        assert (tmp_path / "report" / rep.files[name].split("/")[-1]).stat().st_size > 100
    df = pl.read_parquet(tmp_path / "report" / "questions.parquet")
    assert df["question_id"].to_list() == ["r1", "m1", "f1"]
    assert set(df["verdict"].unique()) <= {"same", "grounded", "perturbed", "misled"}
    for r in df.iter_rows(named=True):
        assert (r["failure_stage"] is None) == r["rag_correct"]
    docs = pl.read_parquet(tmp_path / "report" / "documents.parquet")  # each context document, verdicts counted
    summary_md = (tmp_path / "report" / "summary.md").read_text()
    assert docs["questions"].sum() >= 3 and "## Which documents mislead" in summary_md
    html = (tmp_path / "report" / "report.html").read_text()
    assert "data:image/png;base64," in html and "recall@1" in html
    # The same table on the page, in the same order (the documents that turn right answers wrong first).
    section = html.split("<h2>Which documents mislead</h2>", 1)[1].split("</table>", 1)[0]
    cells = re.findall(r"<tr><td><code>(.*?)</code></td><td>(\d+)</td><td>(\d+)</td>", section)
    assert cells == [(html_escape(d), str(q), str(rw)) for d, q, rw in
                     docs.select(["doc_id", "questions", "right_to_wrong"]).iter_rows()]
    assert (tmp_path / "report" / "recall_at_k.png").read_bytes()[:4] == b"\x89PNG"
    # A second run reuses the index (nothing re-embedded).
    again = run_eval(str(ds), tmp_path / "store", tmp_path / "report2", ks=[1], context_k=1,
                     generator=SMALLEST_GENERATOR, max_new_tokens=4, retriever="bm25")
    cfg = json.loads((tmp_path / "report2" / "eval.config.json").read_text())
    assert cfg["index"]["unchanged"] == 3 and cfg["index"]["added"] == 0 and again.summary["questions"] == 3


def test_jsonl_dataset_shape(tmp_path):
    from tasks.evaluation.datasets import load_eval_dataset

    corpus = tmp_path / "docs"
    corpus.mkdir()
    (corpus / "a.txt").write_text("x")
    f = tmp_path / "qs.jsonl"
    f.write_text(json.dumps({"question": "q?", "answers": "x", "evidence_doc_ids": ["a.txt"]}) + "\n")
    ds = load_eval_dataset(str(f), corpus=corpus)
    assert ds.questions[0].answers == ("x",) and ds.questions[0].evidence_doc_ids == ("a.txt",)
    assert ds.questions[0].id == "qs:1" and ds.questions[0].spans == ()


def test_squad_comes_from_the_file_ragbatch_squad_names(tmp_path, monkeypatch):
    """The registry no longer serves bigbench==1.0.0: a named local copy is read first, never downloaded."""
    import pytest

    from tasks.evaluation.datasets import SQUAD_ENV, DatasetError, load_eval_dataset

    monkeypatch.setenv("RAGBATCH_HOME", str(tmp_path / "home"))  # no cached copy to fall back on
    monkeypatch.setenv(SQUAD_ENV, str(_squad_json(tmp_path / "dev-v1.1.json")))
    ds = load_eval_dataset("squad")
    assert [q.id for q in ds.questions] == ["r1", "m1", "f1"] and ds.documents == 3
    assert not (tmp_path / "home" / "downloads").exists(), "nothing fetched"
    monkeypatch.setenv(SQUAD_ENV, str(tmp_path / "missing.json"))
    with pytest.raises(DatasetError, match=rf"{SQUAD_ENV}=.*missing\.json: no such file.*dev-v1\.1\.json"):
        load_eval_dataset("squad")


def test_eval_keeps_the_first_of_a_repeated_id_as_answer_does(tmp_path):
    """Issue 22, finding 11: eval kept duplicate ids that answer rejects, so metrics counted them twice."""
    from tasks.evaluation.datasets import load_eval_dataset

    corpus = tmp_path / "docs"
    corpus.mkdir()
    (corpus / "a.txt").write_text("x")
    f = tmp_path / "qs.jsonl"
    f.write_text("".join(json.dumps({"id": i, "question": q, "answers": "x", "evidence_doc_ids": ["a.txt"]}) + "\n"
                         for i, q in [("a", "first?"), ("b", "other?"), ("a", "again?")]))
    ds = load_eval_dataset(str(f), corpus=corpus)
    assert [(q.id, q.question) for q in ds.questions] == [("a", "first?"), ("b", "other?")]
    assert "1 questions with a repeated id skipped (kept the first)" in ds.notes
