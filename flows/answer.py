"""The answer flow: question files → dense retrieval → dual generation (with / without context) → Parquet."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.naming import run_name
from storage.results import ResultParts, write_results
from storage.store import Store
from tasks.generate import dual_generate, load_generator
from tasks.metrics import answers_differ
from tasks.questions import Question, QuestionLoad, load_questions
from tasks.retrieve import SearchResult, embedder_for_store, search

DEFAULT_GENERATOR = "qwen2.5-coder-0.5b-instruct"
# Hybrid by default: on the demo corpus dense MiniLM ranks Llama 2 documents above Llama 3 for
# "How many tokens was Llama 3 trained on?" (0.654 vs 0.614); RRF with BM25 puts Llama 3 first.
DEFAULT_RETRIEVER = "hybrid"


@dataclass
class AnswerReport:
    out: str
    questions: int = 0
    differ: int = 0
    question_errors: list[str] = field(default_factory=list)
    retrieve_s: float = 0.0
    generate_s: float = 0.0
    seconds: float = 0.0
    resumed_batches: int = 0  # batches found finished by a killed earlier run of the same settings
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@task(name="load-questions", cache_policy=NO_CACHE)
def load_questions_task(paths: list[str]) -> QuestionLoad:
    loaded = load_questions(paths)
    logger = get_run_logger()
    for err in loaded.errors:
        logger.warning("skipped %s", err)
    logger.info("%d questions (%d rejected rows)", len(loaded.questions), len(loaded.errors))
    return loaded


@task(name="retrieve-batch", cache_policy=NO_CACHE)
def retrieve_task(
    store: str, questions: list[Question], k: int, embedder: str | None, device: str | None, retriever: str,
    rerank: str | None = None, options: dict[str, Any] | None = None,
) -> tuple[list[SearchResult], float]:
    t0 = time.perf_counter()
    results, timings = search(store, [q.question for q in questions], k=k, embedder=embedder, device=device,
                              retriever=retriever, rerank=rerank, **(options or {}))
    get_run_logger().info("%s top-%d for %d questions (%s)", retriever, k, len(questions),
                          ", ".join(f"{a} {b:.2f}s" for a, b in timings.items()))
    return results, time.perf_counter() - t0


@task(name="generate-batch", cache_policy=NO_CACHE)
def generate_task(
    generator: str, questions: list[Question], hits: list[SearchResult], max_new_tokens: int,
    batch_size: int, device: str | None,
) -> tuple[list[str], list[str], float]:
    t0 = time.perf_counter()
    gen = load_generator(generator, device)
    contexts = [list(zip(h.doc_ids, h.texts, strict=True)) for h in hits]
    no_rag, rag = dual_generate(gen, [q.question for q in questions], contexts,
                                max_new_tokens=max_new_tokens, batch_size=batch_size)
    stats = getattr(gen, "last_stats", None)
    get_run_logger().info("generated %d answers in %.1fs (%s)", 2 * len(questions), time.perf_counter() - t0,
                          stats.as_dict() if hasattr(stats, "as_dict") else stats)
    return no_rag, rag, time.perf_counter() - t0


@task(name="answer-batch", cache_policy=NO_CACHE)
def answer_batch_task(
    store: str, questions: list[Question], k: int, embedder: str | None, device: str | None, retriever: str,
    rerank: str | None, options: dict[str, Any] | None, generator: str, max_new_tokens: int, batch_size: int,
) -> tuple[list[SearchResult], list[str], list[str], float, float]:
    """Retrieve and answer one batch (one unit of work for a task runner: on Dask, one worker's)."""
    hits, t_ret = retrieve_task(store, questions, k, embedder, device, retriever, rerank, options)
    no_rag, rag, t_gen = generate_task(generator, questions, hits, max_new_tokens, batch_size, device)
    return hits, no_rag, rag, t_ret, t_gen


@task(name="write-results", cache_policy=NO_CACHE)
def write_task(out: str, rows: list[dict[str, Any]], config: dict[str, Any]) -> str:
    return str(write_results(out, rows, config))



@flow(name="answer", flow_run_name=run_name("answer", "out", stem=True))
def answer_flow(
    questions: list[str],
    store: str,
    out: str,
    k: int = 5,
    generator: str = DEFAULT_GENERATOR,
    embedder: str | None = None,
    retriever: str = DEFAULT_RETRIEVER,
    rerank: str | None = None,
    batch_questions: int = 64,
    gen_batch_size: int = 16,
    max_new_tokens: int = 48,
    device: str | None = None,
    retrieval_options: dict[str, Any] | None = None,
    parallel_batches: int = 1,
) -> AnswerReport:
    """Answer every question twice — without and with the top-``k`` chunks — into a Parquet table.

    ``retrieval_options``: more keyword arguments of :func:`tasks.retrieve.search` (``matrix_dtype``,
    ``rrf_k``, ``fusion_depth``, ``hybrid_weights``, ``rerank_depth``). Batches are submitted to the task
    runner, at most ``parallel_batches`` in flight (1 on one device; one per worker on Dask).
    """
    t0 = time.perf_counter()
    logger = get_run_logger()
    config = embedder_for_store(store, embedder)  # refuses a store built by another embedder, up front
    loaded = load_questions_task(questions)
    report = AnswerReport(out=str(Path(out).expanduser().resolve()), question_errors=loaded.errors)
    qs = loaded.questions
    meta = Store(store).meta()
    parts = ResultParts(report.out)
    settings = {"store": store, "generation": meta.generation, "embedder": config.fingerprint.get("id"), "k": k,
                "generator": generator, "retriever": retriever, "rerank": rerank, "max_new_tokens": max_new_tokens,
                "retrieval_options": retrieval_options}
    slots: list[list[dict[str, Any]]] = []
    pending: deque = deque()

    def finish() -> None:
        slot, batch, key, future = pending.popleft()
        hits, no_rag, rag, t_ret, t_gen = future.result()
        report.retrieve_s += t_ret
        report.generate_s += t_gen
        slots[slot] = [{
            "question_id": q.id, "question": q.question, "source": q.source,
            "gold_answers": list(q.answers), "chunk_ids": h.chunk_ids, "doc_ids": h.doc_ids,
            "scores": h.scores, "chunk_texts": h.texts, "no_rag_answer": a0, "rag_answer": a1,
            "answers_differ": answers_differ(a0, a1), "generator": generator, "embedder": config.name,
            "retriever": retriever + (f"+{rerank}" if rerank and rerank != "none" else ""), "k": k,
            "retrieve_s": t_ret / len(batch), "generate_s": t_gen / len(batch),
        } for q, h, a0, a1 in zip(batch, hits, no_rag, rag, strict=True)]
        parts.put(key, slots[slot])  # durable: a killed run resumes after this batch

    for i in range(0, len(qs), batch_questions):
        batch = qs[i : i + batch_questions]
        key = ResultParts.key(settings, [asdict(q) for q in batch])
        done = parts.get(key)
        slots.append(done or [])
        if done is not None:
            logger.info("questions %d-%d: resumed from %s", i + 1, i + len(batch), parts.dir)
            report.resumed_batches += 1
            continue
        pending.append((len(slots) - 1, batch, key, answer_batch_task.submit(
            store, batch, k, config.name, device, retriever, rerank, retrieval_options, generator, max_new_tokens,
            gen_batch_size)))
        if len(pending) >= max(1, parallel_batches):
            finish()
    while pending:
        finish()
    rows = [r for slot in slots for r in slot]
    run_config = {
        "flow": "answer", "questions": questions, "store": store, "k": k, "generator": generator,
        "retriever": retriever, "rerank": rerank, "retrieval_options": retrieval_options,
        "embedder": config.fingerprint, "batch_questions": batch_questions, "gen_batch_size": gen_batch_size,
        "max_new_tokens": max_new_tokens, "device": device, "created_at": datetime.now().isoformat(),
        "question_errors": loaded.errors,
    }
    write_task(report.out, rows, run_config)
    parts.clear()
    report.questions, report.rows = len(rows), rows
    report.differ = sum(r["answers_differ"] for r in rows)
    report.seconds = time.perf_counter() - t0
    logger.info("%d questions answered, %d changed by retrieval, %.1fs → %s",
                report.questions, report.differ, report.seconds, report.out)
    create_markdown_artifact(key="answers", markdown=answers_markdown(rows),
                             description=f"With/without retrieval: {report.out}")
    return report


def answers_markdown(rows: list[dict[str, Any]], limit: int = 50) -> str:
    """A Markdown table of the with/without answers (for the Prefect UI)."""
    def cell(s: str) -> str:
        return " ".join(str(s).split()).replace("|", "\\|")[:120]

    lines = ["| id | question | without retrieval | with retrieval | differ | top doc |", "|---|---|---|---|---|---|"]
    for r in rows[:limit]:
        top = r["doc_ids"][0] if r["doc_ids"] else ""
        lines.append(f"| {cell(r['question_id'])} | {cell(r['question'])} | {cell(r['no_rag_answer'])} | "
                     f"{cell(r['rag_answer'])} | {'yes' if r['answers_differ'] else 'no'} | {cell(top)} |")
    if len(rows) > limit:
        lines.append(f"\n… {len(rows) - limit} more rows in the Parquet table")
    return "\n".join(lines)


def run_answer(
    questions: str | Path | list[str | Path], store: str | Path, out: str | Path, *, runner: str = "threads",
    dask_address: str | None = None, dask_workers: int = 2, **kw,
) -> AnswerReport:
    """Call the flow with absolute paths, on the chosen task runner (``flows/runners.py``)."""
    from flows.runners import run_flow

    qs = questions if isinstance(questions, list) else [questions]
    args = ([str(Path(q).expanduser().resolve()) for q in qs], str(Path(store).expanduser().resolve()),
            str(Path(out).expanduser().resolve()))
    return run_flow(answer_flow, args, kw, runner, dask_address, dask_workers)
