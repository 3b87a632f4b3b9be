"""The verdict and diagnosis rules, one constructed case per branch, and relevance by span overlap."""

from __future__ import annotations

from tasks.evaluation.datasets import EvalQuestion
from tasks.evaluation.evaluate import ChunkRef, gold_chunks, relevant_chunks, score_question, summarize

DOC = "p.jsonl#Paris#0"
OTHER = "p.jsonl#Rome#0"
TEXT = "Paris is the capital of France. The Seine flows through Paris. Its mayor is Anne Hidalgo."
Q = EvalQuestion("q1", "Which river flows through Paris?", ("Seine", "the Seine"), (DOC,),
                 ((DOC, TEXT.index("Seine"), TEXT.index("Seine") + 5),))
WHOLE = ChunkRef(f"{DOC}#0", DOC, 0, len(TEXT), TEXT)
ROME = ChunkRef(f"{OTHER}#0", OTHER, 0, 40, "Rome is on the Tiber. The Tiber flows south.")


def _score(ranking, evidence, context, no_rag, rag):
    return score_question(Q, ranking, evidence, context, no_rag, rag, [1, 5, 10]).to_record()


def test_relevance_is_span_overlap_and_gold_is_containment():
    start = TEXT.index("Seine")
    left = ChunkRef(f"{DOC}#0", DOC, 0, start + 2, TEXT[: start + 2])  # cuts "Seine" in two
    right = ChunkRef(f"{DOC}#1", DOC, start + 2, len(TEXT), TEXT[start + 2 :])
    far = ChunkRef(f"{DOC}#2", DOC, 0, 10, TEXT[:10])  # same document, no overlap with the span
    assert relevant_chunks(Q, [left, right, far, ROME]) == {left.chunk_id, right.chunk_id}
    assert gold_chunks(Q, [left, right, far]) == set()
    assert gold_chunks(Q, [WHOLE]) == {WHOLE.chunk_id}
    no_spans = EvalQuestion("q", "?", ("x",), (DOC,))
    assert relevant_chunks(no_spans, [far]) == {far.chunk_id}


def test_grounded_improved_correct():
    r = _score([WHOLE, ROME], [WHOLE], [WHOLE, ROME], "The Thames", "the Seine")
    assert (r["verdict"], r["change"], r["rag_correct"], r["failure_stage"]) == ("grounded", "improved", True, None)
    assert r["recall@1"] == 1.0 and r["mrr@10"] == 1.0 and r["faithfulness"] == 1.0


def test_misled_by_irrelevant_chunk_and_generator_blamed():
    # The gold chunk was in the context, but the answer follows the irrelevant Rome chunk.
    r = _score([WHOLE, ROME], [WHOLE], [WHOLE, ROME], "The Thames", "Tiber")
    assert r["verdict"] == "misled" and r["failure_stage"] == "generator" and r["change"] == "unchanged"


def test_perturbed_and_retriever_blamed_with_rank():
    ranking = [ROME] * 0 + [ChunkRef(f"x#{i}", f"x{i}", 0, 1, "noise") for i in range(6)] + [WHOLE]
    r = _score(ranking, [WHOLE], ranking[:5], "Thames", "Danube")
    assert r["verdict"] == "perturbed" and r["failure_stage"] == "retriever"
    assert r["gold_chunk_rank"] == 7 and "ranked 7" in r["failure_detail"]
    assert r["recall@5"] == 0.0 and r["recall@10"] == 1.0


def test_retriever_blamed_when_gold_chunk_never_retrieved():
    r = _score([ROME], [WHOLE], [ROME], "Thames", "Tiber")
    assert r["failure_stage"] == "retriever" and r["gold_chunk_rank"] is None


def test_chunker_blamed_when_span_is_split_or_document_missing():
    start = TEXT.index("Seine")
    left = ChunkRef(f"{DOC}#0", DOC, 0, start + 2, TEXT[: start + 2])
    right = ChunkRef(f"{DOC}#1", DOC, start + 2, len(TEXT), TEXT[start + 2 :])
    r = _score([left, right], [left, right], [left, right], "Thames", "Se")
    assert r["failure_stage"] == "chunker" and "split" in r["failure_detail"]
    r = _score([ROME], [], [ROME], "Thames", "Tiber")
    assert r["failure_stage"] == "chunker" and "not in the index" in r["failure_detail"]


def test_same_answer_and_worsened_counts():
    same = _score([WHOLE], [WHOLE], [WHOLE], "Seine", "seine.")
    worse = _score([ROME], [WHOLE], [ROME], "the Seine", "Tiber")
    assert same["verdict"] == "same" and same["change"] == "unchanged"
    assert worse["change"] == "worsened" and worse["change_em"] == "worsened"
    s = summarize([same, worse], [1, 5, 10])
    assert (s["differ"], s["misled"], s["f1_worsened"], s["fail_retriever"], s["rag_wrong"]) == (1, 1, 1, 1, 1)


def test_eval_row_matches_its_schema():
    """EvalRow's record and eval_schema are one table: same columns in the same order, with and without answers."""
    import pyarrow as pa

    from tasks.evaluation.evaluate import eval_schema, score_retrieval

    full = score_question(Q, [WHOLE, ROME], [WHOLE], [WHOLE, ROME], "The Thames", "the Seine", [1, 5])
    for row, answers in ((full, True), (score_retrieval(Q, [WHOLE], [WHOLE], [1, 5]), False)):
        record = row.to_record()
        assert list(record) == eval_schema([1, 5], answers).names
        assert pa.Table.from_pylist([record], schema=eval_schema([1, 5], answers)).to_pylist() == [record]


def test_the_document_that_turns_right_answers_wrong_comes_first():
    """Issue 21, item 6: a planted document that states a wrong fact, given as context to questions the model
    answers right without it, heads the per-document table; the real scorer makes the verdicts."""
    from tasks.evaluation.datasets import EvalQuestion
    from tasks.evaluation.evaluate import ChunkRef, document_table, score_all

    good = ChunkRef("paris#0", "paris.txt", 0, 40, "Paris is the capital of France.")
    wrong = ChunkRef("planted#0", "planted.txt", 0, 40, "Lyon is the capital of France, not Paris.")
    other = ChunkRef("nile#0", "nile.txt", 0, 40, "The Nile flows north through Egypt.")
    questions = [EvalQuestion("q1", "What is the capital of France?", ("Paris",), ("paris.txt",)),
                 EvalQuestion("q2", "Which city is France's capital?", ("Paris",), ("paris.txt",)),
                 EvalQuestion("q3", "Which way does the Nile flow?", ("north",), ("nile.txt",))]
    context = {"q1": [wrong, good], "q2": [wrong], "q3": [other]}
    answers = {"q1": ("Paris", "Lyon"), "q2": ("Paris", "Lyon"), "q3": ("north", "north")}
    by_id = {q.id: {"chunk_ids": [c.chunk_id for c in context[q.id]], "doc_ids": [c.doc_id for c in context[q.id]],
                    "chunk_texts": [c.text for c in context[q.id]], "no_rag_answer": answers[q.id][0],
                    "rag_answer": answers[q.id][1]} for q in questions}
    rows = score_all(questions, [context[q.id] for q in questions], [[good], [good], [other]], by_id, [1, 5])
    table = document_table(rows, by_id)
    assert [d["doc_id"] for d in table] == ["planted.txt", "paris.txt", "nile.txt"]
    assert table[0]["right_to_wrong"] == 2 and table[0]["misled"] == 2 and table[0]["questions"] == 2
    assert table[1]["right_to_wrong"] == 1 and table[2]["right_to_wrong"] == 0 and table[2]["same"] == 1
