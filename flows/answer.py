"""The answer flow: question files → retrieval (hybrid by default) → dual generation (with / without context) →
Parquet, plus the HTML report and the Prefect artifacts."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.naming import run_name
from flows.runners import in_order
from flows.stopping import stop_between_batches
from storage.outputs import check_outputs
from storage.reports.html import report_path, write_answer_report
from storage.reports.markdown import answers_markdown
from storage.runs.answer_cache import AnswerCache
from storage.runs.results import ResultParts, ResultRow, answer_outputs, write_results
from storage.store import open_store
from storage.store.lock import output_lock
from tasks.config import GenerationConfig, RetrievalConfig, apply_changes, to_dict, with_changes
from tasks.device import default_device, dtype_name
from tasks.generation.cite import cite_columns, strip_citations
from tasks.generation.generate import dual_generate, load_generator
from tasks.generation.prompts import get_prompt
from tasks.generation.snap import snap_answer
from tasks.indexing.embed import EmbedderConfig, embedding_dtype
from tasks.ingest.questions import Question, QuestionStream
from tasks.reporting.cards import build_report
from tasks.retrieval.search import SearchResult, embedder_for_store, search
from tasks.text import answers_differ


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
    from_cache: int = 0  # answers the answer cache served instead of the generator (storage/runs/answer_cache.py)
    dtype: str = ""  # the generator's dtype
    report: str = ""  # RESULTS.report.html
    rows: list[ResultRow] = field(default_factory=list)

    @property
    def padding_ratio(self) -> float:
        return self.padded_tokens / self.prompt_tokens if self.prompt_tokens else 1.0

    def add(self, b: BatchAnswers) -> None:
        """Count one finished batch's timings and generation statistics."""
        self.retrieve_s += b.retrieve_s
        self.generate_s += b.answers.seconds
        self.prompt_tokens += b.answers.stats["prompt_tokens"]
        self.padded_tokens += b.answers.stats["padded_tokens"]
        self.new_tokens += b.answers.stats["new_tokens"]
        self.from_cache += b.answers.stats["from_cache"]
        self.dtype = b.answers.stats["dtype"]

    def to_dict(self) -> dict:
        return asdict(self)


def log_question_errors(stream: QuestionStream) -> None:
    """The rows and files the question stream refused, once it is read to the end."""
    logger = get_run_logger()
    for err in stream.errors:
        logger.warning("skipped %s", err)
    logger.info("%d questions (%d rejected rows)", stream.count, len(stream.errors))


@task(name="retrieve-batch", cache_policy=NO_CACHE)
def retrieve_task(
    store: str, questions: list[Question], retrieval: RetrievalConfig, embedder: EmbedderConfig, device: str | None,
) -> tuple[list[SearchResult], float]:
    """``embedder``: the store's, resolved once by the flow (its weights are not hashed again per batch)."""
    t0 = time.perf_counter()
    results, timings = search(store, [q.question for q in questions], retrieval, device=device,
                              embedder_config=embedder)
    get_run_logger().info("%s top-%d for %d questions (%s)", retrieval.retriever, retrieval.k, len(questions),
                          ", ".join(f"{a} {b:.2f}s" for a, b in timings.items()))
    return results, time.perf_counter() - t0


@dataclass
class Generated:
    """One batch's answers, as the generate-batch task hands them on."""

    no_rag: list[str]
    rag: list[str]  # final RAG answers (snapped when the run snaps)
    rag_raw: list[str]  # what the model said
    stats: dict[str, Any]
    seconds: float
    keys: list[tuple[str, str]] = field(default_factory=list)  # each question's (no-RAG, RAG) answer keys


@dataclass
class BatchAnswers:
    """One batch's retrieval and both answers, as the answer-batch task hands them to the flow."""

    hits: list[SearchResult]
    answers: Generated
    retrieve_s: float
    dense: list[list[float]] = field(default_factory=list)  # dense cosine of each hit, whatever ranked it


@task(name="generate-batch", cache_policy=NO_CACHE)
def generate_task(
    settings: GenerationConfig, questions: list[Question], hits: list[SearchResult], device: str | None,
    use_cache: bool = True,
) -> Generated:
    """Both answers of one batch: without context, and with its retrieved chunks; those the answer cache holds
    are read from it (``use_cache``)."""
    t0 = time.perf_counter()
    gen = load_generator(settings.generator, device, settings.dtype)
    contexts = [list(zip(h.doc_ids, h.texts, strict=True)) for h in hits]
    texts = [q.question for q in questions]
    out = dual_generate(gen, texts, contexts, settings, cache=AnswerCache() if use_cache else None)
    no_rag, raw = out.no_rag, out.rag
    clean = strip_citations(raw, hits)  # "[2]" marks are citations (tasks/generation/cite.py), not answer text
    rag = ([snap_answer(a, q, h.texts) for a, q, h in zip(clean, texts, hits, strict=True)] if settings.snap
           else clean)
    stats = gen.last_stats.as_dict()
    get_run_logger().info("generated %d answers in %.1fs (%s)", 2 * len(questions), time.perf_counter() - t0, stats)
    return Generated(no_rag, rag, raw, stats, time.perf_counter() - t0, list(zip(out.no_rag_keys, out.rag_keys,
                                                                                   strict=True)))


@task(name="answer-batch", cache_policy=NO_CACHE)
def answer_batch_task(
    store: str, questions: list[Question], retrieval: RetrievalConfig, embedder: EmbedderConfig,
    device: str | None, settings: GenerationConfig, use_cache: bool = True,
) -> BatchAnswers:
    """Retrieve and answer one batch (one unit of work for a task runner: on Dask, one worker's)."""
    hits, t_ret = retrieve_task(store, questions, retrieval, embedder, device)
    if retrieval.retriever == "dense" and not retrieval.rerank:
        dense = [h.scores for h in hits]  # already cosines
    else:  # RRF, BM25 and reranker scores mean nothing to a reader: the report shows the cosine beside them
        from tasks.retrieval.cosines import dense_cosines

        dense = dense_cosines(store, [q.question for q in questions], [h.chunk_ids for h in hits], device=device,
                              matrix_dtype=retrieval.matrix_dtype, embedder_config=embedder)
    return BatchAnswers(hits, generate_task(settings, questions, hits, device, use_cache), t_ret, dense)


def result_rows(questions: list[Question], b: BatchAnswers, retrieval: RetrievalConfig, generator: str,
                embedder: str, store_generation: int) -> list[ResultRow]:
    """The result table's rows of one batch (the one place they are built); timings are per question. Each row
    records its evidence: the store generation searched (``store_generation`` when the hits do not say: an index
    run may commit between the flow's start and a batch), each passage's content hash, and the two answer keys."""
    n, g = len(questions), b.answers
    keys = g.keys or [("", "")] * n
    return [ResultRow(
        question_id=q.id, question=q.question, source=q.source, gold_answers=list(q.answers), chunk_ids=h.chunk_ids,
        doc_ids=h.doc_ids, scores=h.scores, dense_scores=d, chunk_texts=h.texts, **cite_columns(raw, a1, h),
        no_rag_answer=a0, rag_answer=a1, rag_raw=raw, answers_differ=answers_differ(a0, a1), generator=generator,
        embedder=embedder, retriever=retrieval.name, k=retrieval.k, retrieve_s=b.retrieve_s / n,
        generate_s=g.seconds / n, store_generation=store_generation if h.generation is None else h.generation,
        chunk_hashes=[hashlib.sha256(t.encode()).hexdigest() for t in h.texts], no_rag_key=k0, rag_key=k1,
    ) for q, h, a0, a1, raw, d, (k0, k1) in zip(questions, b.hits, g.no_rag, g.rag, g.rag_raw,
                                                b.dense or [None] * n, keys, strict=True)]


@task(name="write-results", cache_policy=NO_CACHE)
def write_task(out: str, rows: list[ResultRow], config: dict[str, Any]) -> str:
    return str(write_results(out, rows, config))


@task(name="write-report", cache_policy=NO_CACHE)
def report_task(out: str, rows: list[ResultRow], config: dict[str, Any],
                labels: dict[str, dict[str, Any]] | None = None) -> tuple[str, list[tuple[str, str]]]:
    """RESULTS.report.html beside the table (tasks/reporting/cards.py prepares, storage/reports/html.py renders);
    returns
    its path and the summary rows, or ("", []) when it could not be written: the table is already safe, and a
    derived page must not fail an hour of answering."""
    t0 = time.perf_counter()
    try:
        report = build_report([r.to_record() for r in rows], config, labels, title=Path(out).name)
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
    retrieval: RetrievalConfig | None = None,
    generation: GenerationConfig | None = None,
    batch_questions: int = 64,
    device: str | None = None,
    parallel_batches: int = 1,
    lock_wait_s: float = 0.0,
    use_cache: bool = True,
    locked: bool = False,
    **changes: Any,
) -> AnswerReport:
    """Answer every question twice — without and with its retrieved chunks — into a Parquet table.

    ``retrieval`` and ``generation`` hold every setting (tasks/config.py; hybrid retrieval by default);
    ``changes`` are loose settings of either (``k=2, generator=..., gen_batch_size=8``) applied on top. Batches
    of ``batch_questions`` are submitted to the task runner, at most ``parallel_batches`` in flight (1 on one
    device; one per worker on Dask); each finished batch is kept, so a killed run resumes. ``OUT.lock`` is held
    for the whole run: a second run with the same ``out`` is refused naming the first, or waits ``lock_wait_s``.
    ``use_cache``: answers whose key was seen (any earlier run) are read from the answer cache, not generated
    (storage/runs/answer_cache.py); the cache is pruned to its bound at the end. ``locked``: the caller holds
    ``OUT.lock`` already (``refresh`` holds it for its whole run).
    """
    rc, gs = apply_changes(changes, retrieval or RetrievalConfig(), generation or GenerationConfig())
    gs = with_changes(gs, prompt=get_prompt(gs.prompt).name)  # the config says which template ran
    t0 = time.perf_counter()
    logger = get_run_logger()
    check_outputs(answer_outputs(out), inputs=questions, stores=[store])  # before any work (storage/outputs.py)
    stream = QuestionStream(questions)  # every file checked now; read batch by batch below (tasks/ingest/questions.py)
    with (nullcontext() if locked else output_lock(Path(out).expanduser().resolve(), lock_wait_s),  # a second
          # run on OUT: refused or waits
          stop_between_batches("the answer run") as stop):  # SIGTERM / SIGINT: stop after the current batch
        config = embedder_for_store(store, rc.embedder)  # refuses a store built by another embedder, up front
        report = AnswerReport(out=str(Path(out).expanduser().resolve()), question_errors=stream.errors)
        meta = open_store(store).meta()
        parts = ResultParts(report.out)
        # what a kept batch depends on (its key): the store generation answered at and every setting
        settings = {"store": store, "store_generation": meta.generation, "embedder": config.fingerprint.get("id"),
                    "retrieval": to_dict(rc), "generation": to_dict(gs)}
        slots: list[list[ResultRow]] = []

        def todo() -> Iterator[tuple[int, list[Question], str]]:
            """The batches still to answer, read from the question files only as the runner takes them."""
            first = 1
            for batch in stream.batches(batch_questions):
                key = ResultParts.key(settings, [asdict(q) for q in batch])
                done = parts.get(key)
                slots.append(done or [])
                if done is not None:
                    logger.info("questions %d-%d: resumed from %s", first, first + len(batch) - 1, parts.dir)
                    report.resumed_batches += 1
                else:
                    yield len(slots) - 1, batch, key
                first += len(batch)

        batches = todo()
        for (slot, batch, key), b in in_order(
                lambda t: answer_batch_task.submit(store, t[1], rc, config, device, gs, use_cache), batches,
                parallel_batches,
                stop.requested):
            report.add(b)
            slots[slot] = result_rows(batch, b, rc, gs.generator, config.name, meta.generation)
            parts.put(key, slots[slot])  # durable: a killed run resumes after this batch
        if stop.requested() and next(batches, None) is not None:
            raise stop.stopped(f"{sum(1 for s in slots if s)} batches of {batch_questions} questions are kept in "
                               f"{parts.dir}")
        log_question_errors(stream)
        rows = [r for slot in slots for r in slot]
        run_config = {
            "flow": "answer", "questions": questions, "store": store, "out": report.out, "k": rc.k,
            "generator": gs.generator, "retriever": rc.retriever, "rerank": rc.rerank, "retrieval": to_dict(rc),
            "generation": to_dict(gs),
            "embedder": config.fingerprint, "embedder_dtype": dtype_name(embedding_dtype(device or default_device())),
            "batch_questions": batch_questions,
            "generator_dtype": report.dtype or None,  # None when every batch was resumed
            "answer_cache": str(AnswerCache().root) if use_cache else None, "answers_from_cache": report.from_cache,
            "generation_stats": {"prompt_tokens": report.prompt_tokens, "padded_tokens": report.padded_tokens,
                                 "padding_ratio": round(report.padding_ratio, 3), "new_tokens": report.new_tokens},
            "device": device, "created_at": datetime.now().isoformat(), "question_errors": stream.errors,
        }
        write_task(report.out, rows, run_config)
        parts.clear()
        if use_cache:
            pruned = AnswerCache().prune()
            if pruned:
                logger.info("answer cache: %d least recently used entries pruned", pruned)
        report.questions, report.rows = len(rows), rows
        report.differ = sum(r.answers_differ for r in rows)
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


def run_answer(
    questions: str | Path | list[str | Path], store: str | Path, out: str | Path,
    retrieval: RetrievalConfig | None = None, generation: GenerationConfig | None = None, *,
    runner: str = "threads", dask_address: str | None = None, dask_workers: int = 2, **kw: Any,
) -> AnswerReport:
    """Call the flow with absolute paths, on the chosen task runner (``flows/runners.py``); ``kw``: the flow's
    other arguments and loose settings (``k=2, generator=...``)."""
    from flows.runners import run_flow
    from storage.fs import store_location

    qs = questions if isinstance(questions, list) else [questions]
    args = ([str(Path(q).expanduser().resolve()) for q in qs], store_location(store),
            str(Path(out).expanduser().resolve()))
    return run_flow(answer_flow, args, dict(kw, retrieval=retrieval, generation=generation), runner, dask_address,
                    dask_workers)
