"""The answer report's data: one card per question and the summary, prepared apart from any rendering.

Everything here is plain data (str, numbers, lists, dicts) so the HTML page (storage/reports/html.py, which embeds
it as JSON and draws cards in the browser), the terminal view (``ragbatch show``) and the Prefect artifacts all
show the same thing. Work is linear in questions: each card looks only at its own row.

Verdict and diagnosis come from ``ragbatch eval`` when it labelled the run (``labels``). Without them but with
gold answers, they are computed the same way (tasks/evaluation/evaluate.py) with one stand-in the answer table allows: a
passage is relevant when it contains a gold answer. The answer table does not know the whole index, so a wrong
answer with no such passage is put down to the retriever, and its reason says that eval can tell it from the
chunker.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tasks.evaluation.evaluate import SAME, STAGES, SUPPORT_THRESHOLD, verdict
from tasks.evaluation.evaluate import VERDICTS as EVAL_VERDICTS
from tasks.evaluation.metrics import contains_gold, exact_match, token_f1
from tasks.reporting.marks import gold_spans, support_in, support_spans, tokens, word_diff
from tasks.text import content_tokens

VERDICTS = (*EVAL_VERDICTS, SAME)  # a card shows unchanged answers too


class ChunkTable:
    """Passage texts stored once per report (questions often share chunks), referred to by index."""

    def __init__(self) -> None:
        self.rows: list[list[str]] = []  # [doc_id, text]
        self._index: dict[tuple[str, str], int] = {}

    def add(self, chunk_id: str, doc_id: str, text: str) -> int:
        key = (chunk_id, text)
        if key not in self._index:
            self._index[key] = len(self.rows)
            self.rows.append([doc_id, text])
        return self._index[key]


def _num(value: Any, digits: int = 4) -> float | None:
    """A JSON-safe rounded float (NaN and missing become None)."""
    if value is None:
        return None
    f = float(value)
    return None if math.isnan(f) or math.isinf(f) else round(f, digits)


def _pages(row: dict[str, Any], j: int) -> list[int | None] | None:
    starts, ends = row.get("page_starts"), row.get("page_ends")
    if not starts or j >= len(starts) or starts[j] is None:
        return None
    end = ends[j] if ends and j < len(ends) else None
    return [starts[j], end]


def _cited_pages(cite: dict[str, Any] | None) -> list[int | None] | None:
    """The pages of the span a passage is cited for (issue 24), when it is cited and has pages."""
    if cite and cite.get("page_start") is not None:
        return [cite["page_start"], cite.get("page_end")]
    return None


def _cited(row: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """1-based passage rank → its citation (issue 12's ``citations`` column) for every passage the answer cites."""
    return {int(c["passage"]): c for c in row.get("citations") or [] if c and c.get("passage") is not None}


def build_card(row: dict[str, Any], chunks: ChunkTable, label: dict[str, Any] | None = None) -> dict[str, Any]:
    """One question's card: both answers, their diff, the passages with support and gold spans, and labels.

    Passage keys: ``c`` chunk index, ``id`` chunk id, ``r`` rank, ``s`` retriever score, ``d`` dense cosine,
    ``pg`` [page start, end] of the chunk, ``cpg`` those of the span it is cited for, ``cite`` cited (``inf`` when
    the citation was inferred, ``uns`` when the model's mark points at a passage that does not hold the answer),
    ``sup`` support of the RAG answer by this passage, ``hs``/``hg`` support/gold spans as [start, end) offsets
    into the text.
    """
    golds = list(row.get("gold_answers") or [])
    a0, a1 = row.get("no_rag_answer") or "", row.get("rag_answer") or ""
    dense = row.get("dense_scores")
    cited = _cited(row)
    claims = content_tokens(a1)
    seen: set[str] = set()  # every token of every passage: the context faithfulness looks in
    passages = []
    for j, (cid, doc, text) in enumerate(zip(row.get("chunk_ids") or [], row.get("doc_ids") or [],
                                             row.get("chunk_texts") or [], strict=True)):
        scores = row.get("scores") or []
        toks = tokens(text)
        seen |= toks
        p = {"c": chunks.add(cid, doc, text), "id": cid, "r": j + 1,
             "s": _num(scores[j]) if j < len(scores) else None,
             "d": _num(dense[j]) if dense is not None and j < len(dense) else None,
             "pg": _pages(row, j), "cpg": _cited_pages(cited.get(j + 1)), "cite": j + 1 in cited,
             "inf": bool(cited.get(j + 1, {}).get("inferred")),
             "uns": cited.get(j + 1, {}).get("supported") is False,
             "sup": round(support_in(claims, toks), 3), "hs": support_spans(a1, text),
             "hg": gold_spans(golds, text)}
        passages.append(p)
    card: dict[str, Any] = {
        "id": str(row.get("question_id", "")), "q": row.get("question") or "", "gold": golds, "a0": a0, "a1": a1,
        "raw": row.get("rag_raw") if row.get("rag_raw") not in (None, a1) else None,
        "ch": bool(row.get("answers_differ")), "diff": word_diff(a0, a1), "p": passages,
        "v": None, "dg": None, "why": "",
    }
    if golds:
        card.update(em0=exact_match(a0, golds), em1=exact_match(a1, golds),
                    f10=round(token_f1(a0, golds), 4), f11=round(token_f1(a1, golds), 4))
        card["ok"] = bool(card["em1"] or contains_gold(a1, golds))
    if label is not None:
        card.update(v=label.get("verdict"), dg=label.get("failure_stage"), why=label.get("failure_detail") or "")
    elif golds:
        card.update(_labels(card))
    card["faith"] = round(support_in(claims, frozenset(seen)), 3)
    return card


def _labels(card: dict[str, Any]) -> dict[str, Any]:
    """Verdict and diagnosis from the card alone (relevant passage = one containing a gold answer)."""
    rel = [p for p in card["p"] if p["hg"]]
    rel_support = max((p["sup"] for p in rel), default=0.0)
    irr_support = max((p["sup"] for p in card["p"] if not p["hg"]), default=0.0)
    out: dict[str, Any] = {"v": verdict(card["ch"], rel_support, irr_support, SUPPORT_THRESHOLD), "dg": None,
                           "why": ""}
    if card["ok"]:
        return out
    if rel:
        out.update(dg="generator", why=f"a passage with the gold answer was given at rank {rel[0]['r']}, answer wrong")
    else:
        out.update(dg="retriever", why="no passage given contains a gold answer (retriever or chunker: "
                                       "`ragbatch eval` tells them apart)")
    return out


def summarize_cards(cards: list[dict[str, Any]], rows: list[dict[str, Any]],
                    config: dict[str, Any] | None) -> dict[str, Any]:
    """The run in numbers: questions, changes, models, timings and, with gold answers, EM/F1 and labels."""
    config = config or {}
    first = rows[0] if rows else {}
    emb = config.get("embedder")
    s: dict[str, Any] = {
        "questions": len(cards), "changed": sum(c["ch"] for c in cards),
        "retriever": first.get("retriever") or config.get("retriever"),
        "generator": first.get("generator") or config.get("generator"),
        "embedder": first.get("embedder") or (emb.get("name") if isinstance(emb, dict) else emb),
        "k": first.get("k") or config.get("k"),
        "retrieve_s": round(sum(float(r.get("retrieve_s") or 0) for r in rows), 2),
        "generate_s": round(sum(float(r.get("generate_s") or 0) for r in rows), 2),
        "created_at": config.get("created_at"),
    }
    gold = [c for c in cards if c["gold"]]
    s["with_gold"] = len(gold)
    if gold:
        n = len(gold)
        for key, name in (("em0", "no_rag_em"), ("em1", "rag_em"), ("f10", "no_rag_f1"), ("f11", "rag_f1")):
            s[name] = round(sum(c[key] for c in gold) / n, 4)
        s["faithfulness"] = round(sum(c["faith"] for c in gold) / n, 4)
        for v in VERDICTS:
            s[v] = sum(c["v"] == v for c in cards)
        for st in STAGES:
            s[f"fail_{st}"] = sum(c["dg"] == st for c in cards)
        s["rag_wrong"] = sum(not c.get("ok", True) for c in gold)
    return s


def summary_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """The summary as (name, value) rows: the report's table, the Prefect table artifact, ``ragbatch show``."""
    rows = [("questions", str(s["questions"])), ("answers changed by retrieval", str(s["changed"])),
            ("retriever", str(s["retriever"])), ("k (passages per question)", str(s["k"])),
            ("generator", str(s["generator"])), ("embedder", str(s["embedder"])),
            ("retrieval seconds", f"{s['retrieve_s']:.1f}"), ("generation seconds", f"{s['generate_s']:.1f}")]
    if s.get("with_gold"):
        rows += [("questions with gold answers", str(s["with_gold"])),
                 ("exact match: without → with retrieval", f"{s['no_rag_em']:.3f} → {s['rag_em']:.3f}"),
                 ("token F1: without → with retrieval", f"{s['no_rag_f1']:.3f} → {s['rag_f1']:.3f}"),
                 ("faithfulness of the RAG answer (lexical support)", f"{s['faithfulness']:.3f}"),
                 ("verdicts: grounded / perturbed / misled", f"{s['grounded']} / {s['perturbed']} / {s['misled']}"),
                 ("wrong RAG answers: chunker / retriever / generator",
                  f"{s['fail_chunker']} / {s['fail_retriever']} / {s['fail_generator']}")]
    return rows


def build_report(rows: list[dict[str, Any]], config: dict[str, Any] | None = None,
                 labels: dict[str, dict[str, Any]] | None = None, title: str = "") -> dict[str, Any]:
    """Everything the report shows: ``{"title", "summary", "summary_rows", "chunks", "cards"}``.

    ``labels``: question id → ``{"verdict", "failure_stage", "failure_detail"}`` from ``ragbatch eval``.
    """
    chunks = ChunkTable()
    with _gc_paused():
        cards = [build_card(r, chunks, (labels or {}).get(str(r.get("question_id")))) for r in rows]
    summary = summarize_cards(cards, rows, config)
    return {"title": title, "summary": summary, "summary_rows": summary_rows(summary), "chunks": chunks.rows,
            "cards": cards, "verdicts": VERDICTS, "stages": STAGES}


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Cards are millions of small acyclic objects (freed by reference counting); Python's cyclic collector would
    rescan the growing heap again and again, which made 10,000 questions cost 1.45× more per question than 1,000
    (benchmarks/report.py). Paused while they are built; restored after."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
