"""Score what retrieval changed, per question: retrieval, answers, faithfulness, verdict and diagnosis.

Definitions (also in the README):

- **relevant chunk**: a chunk of a gold evidence document whose character span overlaps a gold evidence
  span; when the data set gives no spans, every chunk of an evidence document.
- **gold chunk**: a chunk that *contains* a whole gold evidence span (when spans are known), i.e. from
  which the answer can be read.
- **correct** answer: exact match after SQuAD normalization, or a gold answer contained in the answer.
- **support**(answer, text): share of the answer's content tokens (normalized, stopwords removed) that
  occur in the text. **faithfulness** = support of the RAG answer by all retrieved chunks together.
  Lexical, because no entailment (NLI) model can be loaded on our machines.
- **verdict** for answers that differ: *grounded* when some relevant retrieved chunk supports the RAG
  answer (support ≥ τ), *misled* when only irrelevant retrieved chunks support it, *perturbed* when no
  retrieved chunk does.
- **diagnosis** for wrong RAG answers: *chunker* when no chunk of the evidence contains a whole gold span
  (split across chunks, or missing from the index); *retriever* when a gold chunk exists but is not
  among the k chunks given to the generator (its rank in the deeper ranking is reported, or none);
  *generator* when a gold chunk was given to the generator and the answer is still wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import pyarrow as pa

from tasks.evaluation.datasets import EvalQuestion
from tasks.evaluation.metrics import (
    contains_gold,
    exact_match,
    first_relevant_rank,
    hit_at_k,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
    token_f1,
)
from tasks.text import answers_differ, support

SUPPORT_THRESHOLD = 0.5

# The words of a diagnosis, defined here once; reporting and the eval report receive them as data.
VERDICTS = ("grounded", "perturbed", "misled")  # how an answer that retrieval changed relates to its context
SAME = "same"  # the verdict of an answer retrieval did not change
STAGES = ("chunker", "retriever", "generator")  # the stage that broke a wrong RAG answer
CHANGES = ("improved", "worsened", "unchanged")  # a score with retrieval against without


@dataclass(frozen=True)
class ChunkRef:
    chunk_id: str
    doc_id: str
    start: int
    end: int
    text: str = ""


def relevant_chunks(q: EvalQuestion, candidates: list[ChunkRef]) -> set[str]:
    """Chunk ids among ``candidates`` that are relevant to ``q``: they overlap a gold span."""
    return _evidence_chunks(q, candidates, lambda c, s, e: c.start < e and s < c.end)


def gold_chunks(q: EvalQuestion, doc_chunks: list[ChunkRef]) -> set[str]:
    """Chunks that contain a whole gold span (or, without spans, every chunk of an evidence document)."""
    return _evidence_chunks(q, doc_chunks, lambda c, s, e: c.start <= s and e <= c.end)


def _evidence_chunks(
    q: EvalQuestion, chunks: list[ChunkRef], matches: Callable[[ChunkRef, int, int], bool]
) -> set[str]:
    """Chunks of an evidence document that ``matches`` one of its gold spans (all of them when it has none)."""
    evidence = set(q.evidence_doc_ids)
    out = set()
    for c in chunks:
        if c.doc_id not in evidence:
            continue
        spans = [(s, e) for d, s, e in q.spans if d == c.doc_id]
        if not spans or any(matches(c, s, e) for s, e in spans):
            out.add(c.chunk_id)
    return out


@dataclass
class AnswerScores:
    """Both answers of one question, scored (what an eval without ``--retrieval-only`` adds to its row)."""

    no_rag_answer: str
    no_rag_em: float
    no_rag_f1: float
    no_rag_contains: bool
    no_rag_correct: bool
    rag_answer: str
    rag_em: float
    rag_f1: float
    rag_contains: bool
    rag_correct: bool
    context_chunk_ids: list[str]  # the chunks the generator saw
    faithfulness: float
    relevant_support: float
    irrelevant_support: float
    answers_differ: bool
    verdict: str
    change: str  # by F1: improved | worsened | unchanged
    change_em: str
    failure_stage: str | None
    failure_detail: str


@dataclass
class EvalRow:
    """One question of an eval report (``questions.parquet``, :func:`eval_schema`): retrieval, then answers.

    :meth:`to_record` gives the table's columns: ``recall@k`` and ``hit@k`` per cut-off, ``mrr@10``, ``ndcg@10``.
    """

    question_id: str
    question: str
    gold_answers: list[str]
    n_relevant: int
    recall: dict[int, float]  # cut-off -> recall@k
    hit: dict[int, float]
    mrr_10: float
    ndcg_10: float
    first_relevant_rank: int | None
    gold_chunk_rank: int | None
    gold_chunk_exists: bool
    answers: AnswerScores | None = None  # None: a retrieval-only eval

    def to_record(self) -> dict[str, Any]:
        row: dict[str, Any] = {"question_id": self.question_id, "question": self.question,
                               "gold_answers": self.gold_answers, "n_relevant": self.n_relevant}
        for k in self.recall:
            row[f"recall@{k}"], row[f"hit@{k}"] = self.recall[k], self.hit[k]
        row.update({"mrr@10": self.mrr_10, "ndcg@10": self.ndcg_10, "first_relevant_rank": self.first_relevant_rank,
                    "gold_chunk_rank": self.gold_chunk_rank, "gold_chunk_exists": self.gold_chunk_exists})
        if self.answers is not None:
            row.update(asdict(self.answers))
        return row


def eval_schema(ks: list[int], answers: bool = True) -> pa.Schema:
    """The Arrow schema of :meth:`EvalRow.to_record` rows (same columns, same order)."""
    head = [("question_id", pa.string()), ("question", pa.string()), ("gold_answers", pa.list_(pa.string())),
            ("n_relevant", pa.int64())]
    cuts = [f for k in ks for f in ((f"recall@{k}", pa.float64()), (f"hit@{k}", pa.float64()))]
    tail = [("mrr@10", pa.float64()), ("ndcg@10", pa.float64()), ("first_relevant_rank", pa.int64()),
            ("gold_chunk_rank", pa.int64()), ("gold_chunk_exists", pa.bool_())]
    scores = [(f.name, _ARROW[str(f.type)]) for f in fields(AnswerScores)]
    return pa.schema(head + cuts + tail + (scores if answers else []))


_ARROW = {"str": pa.string(), "float": pa.float64(), "bool": pa.bool_(), "str | None": pa.string(),
          "list[str]": pa.list_(pa.string())}  # AnswerScores' annotations (strings: postponed evaluation)


def score_retrieval(q: EvalQuestion, ranking: list[ChunkRef], evidence_chunks: list[ChunkRef],
                    ks: list[int]) -> EvalRow:
    """Retrieval metrics of one question; ``ranking`` is the deep ranking (best first), ``evidence_chunks``
    all indexed chunks of its evidence documents."""
    ids = [c.chunk_id for c in ranking]
    relevant = relevant_chunks(q, evidence_chunks) | relevant_chunks(q, ranking)
    golds = gold_chunks(q, evidence_chunks)
    return EvalRow(question_id=q.id, question=q.question, gold_answers=list(q.answers), n_relevant=len(relevant),
                   recall={k: recall_at_k(ids, relevant, k) for k in ks},
                   hit={k: hit_at_k(ids, relevant, k) for k in ks},
                   mrr_10=mrr_at_k(ids, relevant, 10), ndcg_10=ndcg_at_k(ids, relevant, 10),
                   first_relevant_rank=first_relevant_rank(ids, relevant),
                   gold_chunk_rank=first_relevant_rank(ids, golds), gold_chunk_exists=bool(golds))


def score_question(
    q: EvalQuestion,
    ranking: list[ChunkRef],
    evidence_chunks: list[ChunkRef],
    context: list[ChunkRef],
    no_rag_answer: str,
    rag_answer: str,
    ks: list[int],
    tau: float = SUPPORT_THRESHOLD,
) -> EvalRow:
    """Every per-question number and label: retrieval (see :func:`score_retrieval`), both answers, and
    ``context``, the chunks the generator saw (the answer flow's top k)."""
    row = score_retrieval(q, ranking, evidence_chunks, ks)
    relevant = relevant_chunks(q, evidence_chunks) | relevant_chunks(q, ranking)
    golds = gold_chunks(q, evidence_chunks)
    context_rank = first_relevant_rank([c.chunk_id for c in context], golds)
    arms = {}
    for arm, ans in (("no_rag", no_rag_answer), ("rag", rag_answer)):
        em, contains = exact_match(ans, q.answers), contains_gold(ans, q.answers)
        arms.update({f"{arm}_answer": ans, f"{arm}_em": em, f"{arm}_f1": token_f1(ans, q.answers),
                     f"{arm}_contains": contains, f"{arm}_correct": bool(em or contains)})
    rel_support = max((support(rag_answer, c.text) for c in context if c.chunk_id in relevant), default=0.0)
    irr_support = max((support(rag_answer, c.text) for c in context if c.chunk_id not in relevant), default=0.0)
    differ = answers_differ(no_rag_answer, rag_answer)
    d_f1 = arms["rag_f1"] - arms["no_rag_f1"]
    stage, detail = diagnose(arms["rag_correct"], golds, row.gold_chunk_rank, context_rank, len(context), q,
                             evidence_chunks)
    row.answers = AnswerScores(
        **arms, context_chunk_ids=[c.chunk_id for c in context],
        faithfulness=support(rag_answer, "\n".join(c.text for c in context)), relevant_support=rel_support,
        irrelevant_support=irr_support, answers_differ=differ, verdict=verdict(differ, rel_support, irr_support, tau),
        change=change(d_f1), change_em=change(arms["rag_em"] - arms["no_rag_em"]),
        failure_stage=stage, failure_detail=detail)
    return row


def verdict(differ: bool, relevant_support: float, irrelevant_support: float, tau: float = SUPPORT_THRESHOLD) -> str:
    grounded, perturbed, misled = VERDICTS
    if not differ:
        return SAME
    if relevant_support >= tau:
        return grounded
    if irrelevant_support >= tau:
        return misled
    return perturbed


def change(delta: float) -> str:
    """``improved``, ``worsened`` or ``unchanged``: a score with retrieval minus without (float noise ignored)."""
    improved, worsened, unchanged = CHANGES
    return improved if delta > 1e-9 else worsened if delta < -1e-9 else unchanged


def diagnose(
    correct: bool, golds: set[str], gold_rank: int | None, context_rank: int | None, context_k: int,
    q: EvalQuestion, evidence_chunks: list[ChunkRef],
) -> tuple[str | None, str]:
    """Which stage broke a wrong RAG answer (None when the answer is correct)."""
    chunker, retriever, generator = STAGES
    if correct:
        return None, ""
    if not golds:
        indexed = {c.doc_id for c in evidence_chunks} & set(q.evidence_doc_ids)
        if not indexed:
            return chunker, "evidence document is not in the index"
        return chunker, "no single chunk contains the gold evidence span (split across chunks)"
    if context_rank is not None:
        return generator, f"gold chunk given at rank {context_rank}, answer wrong"
    if gold_rank is None:
        return retriever, "gold chunk not in the retrieved ranking"
    return retriever, f"gold chunk ranked {gold_rank}, beyond the top {context_k} given to the generator"


def score_all(questions: list[EvalQuestion], rankings: list[list[ChunkRef]], evidence: list[list[ChunkRef]],
              answers: dict[str, dict[str, Any]] | None, ks: list[int]) -> list[dict[str, Any]]:
    """One scored row per question: retrieval only when ``answers`` is None, else joined with its answer row
    (by question id) and the passages it was given, taken from the ranking where they are in it."""
    rows = []
    for q, ranking, ev in zip(questions, rankings, evidence, strict=True):
        if answers is None:
            rows.append(score_retrieval(q, ranking, ev, ks).to_record())
            continue
        a = answers[q.id]
        text_of = {c.chunk_id: c for c in ranking + ev}
        context = [text_of.get(cid) or ChunkRef(cid, d, 0, 0, t)
                   for cid, d, t in zip(a["chunk_ids"], a["doc_ids"], a["chunk_texts"], strict=True)]
        rows.append(score_question(q, ranking, ev, context, a["no_rag_answer"], a["rag_answer"], ks).to_record())
    return rows


def examples_by_verdict(rows: list[dict[str, Any]], answers: dict[str, dict], per: int = 3) -> dict[str, list[dict]]:
    """Up to ``per`` questions of each verdict (every verdict a key, in evaluation's order: the report's sections)."""
    out: dict[str, list[dict]] = {v: [] for v in VERDICTS}
    for v in VERDICTS:
        for r in [r for r in rows if r["verdict"] == v][:per]:
            a = answers[r["question_id"]]
            out[v].append({
                "question": r["question"], "gold_answers": r["gold_answers"], "no_rag_answer": r["no_rag_answer"],
                "rag_answer": r["rag_answer"], "chunks": list(zip(a["chunk_ids"], a["chunk_texts"], strict=True)),
            })
    return out



def document_table(rows: list[dict[str, Any]], answers: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per document: in how many questions' context it was, and how those answers fared (verdicts; and
    ``right_to_wrong``: right without retrieval, wrong with it). The documents that most often turn a right
    closed-book answer into a wrong one come first: the sources a document owner should look at."""
    table: dict[str, dict[str, Any]] = {}
    for r in rows:
        if "verdict" not in r:
            continue
        for doc in dict.fromkeys(answers[r["question_id"]]["doc_ids"]):
            d = table.setdefault(doc, {"doc_id": doc, "questions": 0, "right_to_wrong": 0,
                                       **{v: 0 for v in (*VERDICTS, SAME)}})
            d["questions"] += 1
            d[r["verdict"]] += 1
            d["right_to_wrong"] += bool(r["no_rag_correct"] and not r["rag_correct"])
    _, _, misled = VERDICTS
    return sorted(table.values(), key=lambda d: (-d["right_to_wrong"], -d[misled], -d["questions"], d["doc_id"]))


def recall_curve(rankings: list[list[str]], relevants: list[set[str]], depth: int) -> list[float]:
    """Mean recall@k for k = 1..depth."""
    n = len(rankings) or 1
    return [sum(recall_at_k(r, rel, k) for r, rel in zip(rankings, relevants, strict=True)) / n
            for k in range(1, depth + 1)]


def summarize(rows: list[dict[str, Any]], ks: list[int]) -> dict[str, Any]:
    """Averages and counts over all questions."""
    n = len(rows) or 1

    def mean(key: str) -> float:
        return sum(float(r[key]) for r in rows) / n

    out: dict[str, Any] = {"questions": len(rows)}
    for k in ks:
        out[f"recall@{k}"] = mean(f"recall@{k}")
    out["mrr@10"], out["ndcg@10"] = mean("mrr@10"), mean("ndcg@10")
    if not rows or "rag_answer" not in rows[0]:  # retrieval-only evaluation
        return out
    for arm in ("no_rag", "rag"):
        for m in ("em", "f1", "contains"):
            out[f"{arm}_{m}"] = mean(f"{arm}_{m}")
    out["faithfulness"] = mean("faithfulness")
    out["differ"] = sum(r["answers_differ"] for r in rows)
    for v in VERDICTS:
        out[v] = sum(r["verdict"] == v for r in rows)
    for c in CHANGES:
        out[f"f1_{c}"] = sum(r["change"] == c for r in rows)
        out[f"em_{c}"] = sum(r["change_em"] == c for r in rows)
    for s in STAGES:
        out[f"fail_{s}"] = sum(r["failure_stage"] == s for r in rows)
    out["rag_wrong"] = sum(not r["rag_correct"] for r in rows)
    return out
