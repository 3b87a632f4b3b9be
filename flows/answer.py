"""The answer flow: question files → dense retrieval → dual generation (with / without context) → Parquet."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.naming import run_name
from storage.report_html import report_path, write_answer_report
from storage.results import ResultParts, write_results
from storage.store import Store
from tasks.cite import cite_columns, cited_where, strip_citations
from tasks.device import default_device, dtype_name
from tasks.embed import embedding_dtype
from tasks.generate import TOKEN_BUDGET, dual_generate, load_generator
from tasks.metrics import answers_differ
from tasks.prepare import DEFAULT_GENERATOR
from tasks.prompts import get_prompt
from tasks.questions import Question, QuestionLoad, load_questions
from tasks.report import build_report
from tasks.retrieve import SearchResult, embedder_for_store, search
from tasks.snap import snap_answer

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
    prompt_tokens: int = 0  # real prompt tokens the generator read (both arms)
    padded_tokens: int = 0  # prompt tokens including padding: padded / real is the wasted prefill
    new_tokens: int = 0
    dtype: str = ""  # the generator's dtype
    report: str = ""  # RESULTS.report.html
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def padding_ratio(self) -> float:
        return self.padded_tokens / self.prompt_tokens if self.prompt_tokens else 1.0

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


@dataclass
class GenerationSettings:
    """How answers are generated: everything that decides the generator's output, saved with each run."""

    generator: str = DEFAULT_GENERATOR
    prompt: str | None = None  # a template of tasks/prompts.toml; None = its default
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 (tasks/device.py)
    max_new_tokens: int = 48
    batch_size: int = 16  # most prompts per generate() call
    token_budget: int = TOKEN_BUDGET  # most padded prompt tokens per generate() call
    snap: bool = True  # RAG answers snapped to the shortest passage span (tasks/snap.py); raw kept

    def resolved(self) -> GenerationSettings:
        """The same with the prompt name filled in (so a run's config says which template ran)."""
        return GenerationSettings(**{**asdict(self), "prompt": get_prompt(self.prompt).name})


@dataclass
class BatchAnswers:
    """One batch's retrieval and both answers, as the answer-batch task hands them to the flow."""

    hits: list[SearchResult]
    no_rag: list[str]
    rag: list[str]  # final RAG answers (snapped when settings.snap)
    rag_raw: list[str]  # what the model said
    retrieve_s: float
    generate_s: float
    stats: dict[str, Any]
    dense: list[list[float]] = field(default_factory=list)  # dense cosine of each hit, whatever ranked it


@task(name="generate-batch", cache_policy=NO_CACHE)
def generate_task(
    settings: GenerationSettings, questions: list[Question], hits: list[SearchResult], device: str | None,
) -> tuple[list[str], list[str], list[str], dict[str, Any], float]:
    """(no-RAG answers, final RAG answers, raw RAG answers, generation stats, seconds) for one batch."""
    t0 = time.perf_counter()
    gen = load_generator(settings.generator, device, settings.dtype)
    contexts = [list(zip(h.doc_ids, h.texts, strict=True)) for h in hits]
    texts = [q.question for q in questions]
    no_rag, raw = dual_generate(gen, texts, contexts, max_new_tokens=settings.max_new_tokens,
                                batch_size=settings.batch_size, prompt=settings.prompt,
                                token_budget=settings.token_budget)
    clean = strip_citations(raw, hits)  # "[2]" marks are citations (tasks/cite.py), not answer text
    rag = ([snap_answer(a, q, h.texts) for a, q, h in zip(clean, texts, hits, strict=True)] if settings.snap
           else clean)
    stats = gen.last_stats.as_dict()
    get_run_logger().info("generated %d answers in %.1fs (%s)", 2 * len(questions), time.perf_counter() - t0, stats)
    return no_rag, rag, raw, stats, time.perf_counter() - t0


@task(name="answer-batch", cache_policy=NO_CACHE)
def answer_batch_task(
    store: str, questions: list[Question], k: int, embedder: str | None, device: str | None, retriever: str,
    rerank: str | None, options: dict[str, Any] | None, settings: GenerationSettings,
) -> BatchAnswers:
    """Retrieve and answer one batch (one unit of work for a task runner: on Dask, one worker's)."""
    hits, t_ret = retrieve_task(store, questions, k, embedder, device, retriever, rerank, options)
    if retriever == "dense" and (not rerank or rerank == "none"):
        dense = [h.scores for h in hits]  # already cosines
    else:  # RRF, BM25 and reranker scores mean nothing to a reader: the report shows the cosine beside them
        from tasks.cosines import dense_cosines

        dense = dense_cosines(store, [q.question for q in questions], [h.chunk_ids for h in hits], embedder, device,
                              (options or {}).get("matrix_dtype"))
    no_rag, rag, raw, stats, t_gen = generate_task(settings, questions, hits, device)
    return BatchAnswers(hits, no_rag, rag, raw, t_ret, t_gen, stats, dense)


@task(name="write-results", cache_policy=NO_CACHE)
def write_task(out: str, rows: list[dict[str, Any]], config: dict[str, Any]) -> str:
    return str(write_results(out, rows, config))


@task(name="write-report", cache_policy=NO_CACHE)
def report_task(out: str, rows: list[dict[str, Any]], config: dict[str, Any],
                labels: dict[str, dict[str, Any]] | None = None) -> tuple[str, list[tuple[str, str]]]:
    """RESULTS.report.html beside the table (tasks/report.py prepares, storage/report_html.py renders); returns
    its path and the summary rows, or ("", []) when it could not be written: the table is already safe, and a
    derived page must not fail an hour of answering."""
    t0 = time.perf_counter()
    try:
        report = build_report(rows, config, labels, title=Path(out).name)
        path = write_answer_report(report_path(out), report)
    except Exception as exc:  # noqa: BLE001 - logged with its reason; `ragbatch show` still reads the table
        get_run_logger().error("report %s not written (%s: %s); the table %s is complete", report_path(out),
                               type(exc).__name__, exc, out)
        return "", []
    get_run_logger().info("report %s (%d questions, %.1f MB) in %.1fs", path, len(rows),
                          path.stat().st_size / 1e6, time.perf_counter() - t0)
    return str(path), report["summary_rows"]



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
    generation: GenerationSettings | None = None,
) -> AnswerReport:
    """Answer every question twice — without and with the top-``k`` chunks — into a Parquet table.

    ``retrieval_options``: more keyword arguments of :func:`tasks.retrieve.search` (``matrix_dtype``,
    ``rrf_k``, ``fusion_depth``, ``hybrid_weights``, ``rerank_depth``). ``generation`` holds the prompt,
    dtype, token budget and snapping; when given, its generator, batch size and max new tokens win over the
    loose arguments of the same name. Batches are submitted to the task runner, at most ``parallel_batches``
    in flight (1 on one device; one per worker on Dask).
    """
    gs = (generation or GenerationSettings(generator=generator, max_new_tokens=max_new_tokens,
                                           batch_size=gen_batch_size)).resolved()
    generator = gs.generator
    t0 = time.perf_counter()
    logger = get_run_logger()
    config = embedder_for_store(store, embedder)  # refuses a store built by another embedder, up front
    loaded = load_questions_task(questions)
    report = AnswerReport(out=str(Path(out).expanduser().resolve()), question_errors=loaded.errors)
    qs = loaded.questions
    meta = Store(store).meta()
    parts = ResultParts(report.out)
    settings = {"store": store, "generation": meta.generation, "embedder": config.fingerprint.get("id"), "k": k,
                "retriever": retriever, "rerank": rerank, "retrieval_options": retrieval_options,
                "generation_settings": asdict(gs)}
    slots: list[list[dict[str, Any]]] = []
    pending: deque = deque()

    def finish() -> None:
        slot, batch, key, future = pending.popleft()
        b: BatchAnswers = future.result()
        report.retrieve_s += b.retrieve_s
        report.generate_s += b.generate_s
        report.prompt_tokens += b.stats["prompt_tokens"]
        report.padded_tokens += b.stats["padded_tokens"]
        report.new_tokens += b.stats["new_tokens"]
        report.dtype = b.stats["dtype"]
        slots[slot] = [{
            "question_id": q.id, "question": q.question, "source": q.source,
            "gold_answers": list(q.answers), "chunk_ids": h.chunk_ids, "doc_ids": h.doc_ids,
            "scores": h.scores, "dense_scores": d, "chunk_texts": h.texts, "no_rag_answer": a0, "rag_answer": a1,
            "rag_raw": raw, **cite_columns(raw, a1, h),
            "answers_differ": answers_differ(a0, a1), "generator": generator, "embedder": config.name,
            "retriever": retriever + (f"+{rerank}" if rerank and rerank != "none" else ""), "k": k,
            "retrieve_s": b.retrieve_s / len(batch), "generate_s": b.generate_s / len(batch),
        } for q, h, a0, a1, raw, d in zip(batch, b.hits, b.no_rag, b.rag, b.rag_raw, b.dense or [None] * len(batch),
                                          strict=True)]
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
            store, batch, k, config.name, device, retriever, rerank, retrieval_options, gs)))
        if len(pending) >= max(1, parallel_batches):
            finish()
    while pending:
        finish()
    rows = [r for slot in slots for r in slot]
    run_config = {
        "flow": "answer", "questions": questions, "store": store, "k": k, "generator": generator,
        "retriever": retriever, "rerank": rerank, "retrieval_options": retrieval_options,
        "embedder": config.fingerprint, "embedder_dtype": dtype_name(embedding_dtype(device or default_device())),
        "batch_questions": batch_questions, "generation": asdict(gs),
        "generator_dtype": report.dtype or None,  # None when every batch was resumed
        "generation_stats": {"prompt_tokens": report.prompt_tokens, "padded_tokens": report.padded_tokens,
                             "padding_ratio": round(report.padding_ratio, 3), "new_tokens": report.new_tokens},
        "device": device, "created_at": datetime.now().isoformat(), "question_errors": loaded.errors,
    }
    write_task(report.out, rows, run_config)
    parts.clear()
    report.questions, report.rows = len(rows), rows
    report.differ = sum(r["answers_differ"] for r in rows)
    report.seconds = time.perf_counter() - t0
    logger.info("%d questions answered, %d changed by retrieval, %.1fs → %s; generator %s, padded/real prompt "
                "tokens %.3f", report.questions, report.differ, report.seconds, report.out, report.dtype,
                report.padding_ratio)
    report.report, summary_rows = report_task(report.out, rows, run_config)
    create_markdown_artifact(key="answers", markdown=answers_markdown(rows, report=report.report),
                             description=f"With/without retrieval: {report.out}")
    create_table_artifact(key="answers-summary", table=[{"measure": n, "value": v} for n, v in summary_rows],
                          description=f"What retrieval changed: {report.out}")
    return report


def answers_markdown(rows: list[dict[str, Any]], limit: int = 50, report: str | None = None) -> str:
    """A Markdown table of the with/without answers (for the Prefect UI); every cell escaped (storage/escape.py).

    ``report``: the HTML report's path, linked above the table (a browser opens it from a file:// link only when
    the UI itself is not served over http, so the path is shown too).
    """
    from urllib.parse import quote

    from storage.escape import md_code, md_text

    def cell(s: str) -> str:
        return md_text(s, limit=120)

    lines = []
    if report:
        url = "file://" + quote(str(Path(report).resolve()))
        lines += [f"Every question with both answers, the diff and the passages: [the report]({url}) "
                  f"{md_code(report)}", ""]
    lines += ["| id | question | without retrieval | with retrieval | differ | cites (else top doc) |",
              "|---|---|---|---|---|---|"]
    for r in rows[:limit]:
        top = cited_where(r.get("citations")) or (r["doc_ids"][0] if r["doc_ids"] else "")  # e.g. [2] a.pdf p. 3
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
    from storage.fs import store_location

    args = ([str(Path(q).expanduser().resolve()) for q in qs], store_location(store),
            str(Path(out).expanduser().resolve()))
    return run_flow(answer_flow, args, kw, runner, dask_address, dask_workers)
