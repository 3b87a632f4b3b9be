"""The refresh flow: a finished answer run brought to the store's current generation, at the cost of what changed.

It re-runs the run's saved config (its question files, store and settings; given options win) through the answer
flow: retrieval again for every question (cheap, and the only way to see a new document enter a top-k), and
generation only for answers whose key changed (tasks/generation/keys.py). The old table's answers are put into the
answer cache under their keys first, so they are reused even when the cache was pruned or turned off; rows of a
table written before the keys existed are answered again, once, and the run says so. The previous table is kept
as a revision (storage/runs/revisions.py) before the new one replaces it; the comparison of the two goes to
``RESULTS.changes.parquet``, the page ``RESULTS.changes.html`` and a Prefect artifact.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.answer import AnswerReport, answer_flow
from flows.naming import run_name
from storage.atomic import write_bytes_atomic
from storage.hooks import crash_point
from storage.reports.html import changes_report_path, write_changes_report
from storage.runs.answer_cache import AnswerCache
from storage.runs.results import config_path, read_results
from storage.runs.revisions import changes_table_path, finish_revision, pending_revision, start_revision, write_changes
from storage.store import EmbedderMismatchError, StoreError, open_store
from storage.store.lock import output_lock
from tasks.config import RetrievalConfig, load_run_config, with_changes
from tasks.reporting.changes import FILTERS, Change, Manifest, change_view, compare_tables, summarize_changes

# Questions per batch of a refresh. benchmarks/refresh.py, 300 questions, 1% of the documents changed (Intel AMX,
# Qwen 0.5B): the 32 answers to generate, spread over the run's 5 batches of 64, made a 51.9 s refresh; in one
# batch, 33.1 s (a fixed 6 s of it: retrieval and start-up). A kill loses at most one batch's retrieval; answers
# already generated are in the answer cache.
REFRESH_BATCH_QUESTIONS = 1024


@dataclass
class RefreshReport:
    out: str
    revision: str = ""  # where the previous table was kept
    changes_table: str = ""
    changes_report: str = ""  # RESULTS.changes.html
    summary: dict[str, int] = field(default_factory=dict)
    seeded: int = 0  # old answers put into the cache under their keys
    unknown_evidence: int = 0  # rows of a table written before the evidence columns: answered again
    questions_from_table: bool = False  # the question files were gone: the table's own questions were used
    answer: AnswerReport | None = None
    changes: list[Change] = field(default_factory=list)
    seconds: float = 0.0


@flow(name="refresh", flow_run_name=run_name("refresh", "results", stem=True))
def refresh_flow(results: str, store: str | None = None, use_cache: bool = True, lock_wait_s: float = 0.0,
                 batch_questions: int | None = None, **changes: Any) -> RefreshReport:
    """Refresh ``results`` (a finished answer run's table) against the store's current generation.

    ``RESULTS.lock`` is held throughout: a second refresh (or an answer run) of the same table is refused naming
    this one, or waits ``lock_wait_s``. A kill at any point leaves the previous table in place or kept as a
    revision; ``RESULTS.refresh.json`` (written once the revision is kept, removed once the change table and page
    are) tells the re-run to compare against that revision, so the change it reports is the whole change.

    ``batch_questions``: questions per batch, by default at least ``REFRESH_BATCH_QUESTIONS``. The few answers a
    refresh generates are spread over every batch of the run; in one batch they fill the generator's batches.
    """
    t0 = time.perf_counter()
    logger = get_run_logger()
    path = Path(results).expanduser().resolve()
    with output_lock(path, lock_wait_s, doing="a refresh is rewriting it"):
        pending = pending_revision(path)
        base = pending or path  # a killed refresh's revision is the table as it was before that refresh
        saved = load_run_config(config_path(base))
        old_rows = read_results(base).to_pylist()
        store = store or saved["store"]
        _check_store(path, saved, old_rows, store)
        report = RefreshReport(out=str(path))
        questions = _question_files(saved, old_rows, path, report)
        report.seeded, report.unknown_evidence = _seed_cache(old_rows)
        if report.unknown_evidence:
            logger.warning("%d rows of %s were written before answers recorded their evidence: they are answered "
                           "again, once", report.unknown_evidence, path)
        if pending:
            logger.warning("an earlier refresh of %s was stopped: comparing against the table it kept, %s", path,
                           pending)
        report.revision = str(pending or start_revision(path, _generation(old_rows)))
        crash_point("after-revision")
        rc: RetrievalConfig = saved["retrieval"]
        gs = saved["generation"]
        retrieval_changes = {k: v for k, v in changes.items() if hasattr(rc, k)}
        generation_changes = {k: v for k, v in changes.items() if hasattr(gs, k)}
        ans = answer_flow(questions, store, str(path), with_changes(rc, **retrieval_changes),
                          with_changes(gs, **generation_changes),
                          batch_questions=batch_questions or max(int(saved.get("batch_questions") or 64),
                                                                 REFRESH_BATCH_QUESTIONS),
                          use_cache=use_cache, locked=True)
        crash_point("after-refreshed-table")
        new_rows = [r.to_record() for r in ans.rows]
        manifest = _manifest(store, new_rows)
        report.answer, report.changes = ans, compare_tables(old_rows, new_rows, manifest)
        report.summary = summarize_changes(report.changes)
        records = [c.to_record() for c in report.changes]
        changes_path = changes_table_path(path)
        write_changes(changes_path, records)
        report.changes_table = str(changes_path)
        report.changes_report = _write_page(path, records, report.summary)
        finish_revision(path)
    create_table_artifact(key="refresh-changes", table=[{"what": k, "count": v} for k, v in report.summary.items()],
                          description=f"Refresh of {path}: what the store's changes did to its answers; "
                                      f"every change: file://{report.changes_report}")
    report.seconds = time.perf_counter() - t0
    logger.info("refresh %s: %s; %d answers generated, %d from the cache; previous table kept as %s",
                path, report.summary, 2 * ans.questions - ans.from_cache, ans.from_cache, report.revision)
    return report


def _check_store(path: Path, saved: dict[str, Any], rows: list[dict[str, Any]], store: str) -> None:
    """Refuse a store the table was not answered from: one built by another embedder, or one behind the generation
    the table was answered at (a store's generations only grow), naming both."""
    s = open_store(store)
    fingerprint = saved.get("embedder") or {}
    if fingerprint.get("id"):
        try:
            s.check_embedder(fingerprint)
        except EmbedderMismatchError as exc:
            raise EmbedderMismatchError(f"{path} was answered with another embedder than this store's: {exc}") from None
    answered, now = _generation(rows), s.meta().generation
    if answered is not None and now < answered:
        raise StoreError(f"{path} was answered at generation {answered} of store {saved.get('store')}, but store "
                         f"{store} is at generation {now}: not the store it was answered from (or a copy of it)")


def _question_files(saved: dict[str, Any], old_rows: list[dict[str, Any]], path: Path,
                    report: RefreshReport) -> list[str]:
    """The run's question files; when they are gone, a file of the questions stored in the table (with gold)."""
    questions = [str(q) for q in saved.get("questions") or []]
    if questions and all(Path(q).exists() for q in questions):
        return questions
    qfile = path.with_name(path.name + ".questions.jsonl")
    write_bytes_atomic(qfile, "".join(json.dumps({"id": r["question_id"], "question": r["question"],
                                                  "answers": r["gold_answers"] or []}) + "\n"
                                      for r in old_rows).encode())
    get_run_logger().warning("question files %s not found: refreshing the %d questions stored in %s", questions,
                             len(old_rows), path)
    report.questions_from_table = True
    return [str(qfile)]


def _seed_cache(old_rows: list[dict[str, Any]]) -> tuple[int, int]:
    """Put the table's answers into the answer cache under their keys (so they are reused even when the cache was
    pruned or is off); returns (answers seeded, rows without keys)."""
    cache, seeded, unknown = AnswerCache(), 0, 0
    for r in old_rows:
        if r.get("no_rag_key") and r.get("rag_key"):
            for key, answer in ((r["no_rag_key"], r["no_rag_answer"]), (r["rag_key"], r["rag_raw"])):
                if cache.get(key) is None:
                    cache.put(key, answer)
                    seeded += 1
        else:
            unknown += 1
    return seeded, unknown


def _manifest(store: str, rows: list[dict[str, Any]]) -> Manifest | None:
    """The refreshed generation's documents (doc id → added_at, changed_at), or None when the store has moved on
    since the rows were answered (then which document changed when is not known)."""
    s = open_store(store)
    meta = s.meta()
    if {r.get("store_generation") for r in rows} - {meta.generation}:
        get_run_logger().warning("store %s committed generation %d during the refresh: document changes are shown "
                                 "as unknown", store, meta.generation)
        return None
    return {r["doc_id"]: (r["added_at"], r["changed_at"]) for r in
            s.manifest(meta).select(["doc_id", "added_at", "changed_at"]).to_pylist()}


def _write_page(path: Path, records: list[dict[str, Any]], summary: dict[str, int]) -> str:
    entries = change_view(records)
    rows = [(k.replace("_", " "), str(v)) for k, v in summary.items()]
    filters = [(name, sum(name in e["filters"] for e in entries)) for name in FILTERS]
    return str(write_changes_report(changes_report_path(path), path.name, rows, entries, filters,
                                    len(records) - len(entries)))


def refresh_ledger(results_dir: str) -> list[str]:
    """Refresh every result table the ledger of ``results_dir`` lists (storage/runs/inbox.py), once each, oldest
    first; a table that fails is logged and the others still refreshed. Returns the tables refreshed."""
    from storage.runs.inbox import read_ledger

    logger = get_run_logger()
    done: list[str] = []
    for out in dict.fromkeys(e.get("out") for e in read_ledger(results_dir)):
        if not out or not Path(out).is_file():
            continue
        try:
            refresh_flow(out)
            done.append(out)
        except Exception as exc:  # noqa: BLE001 - one table's failure must not keep the others stale
            logger.error("refresh of %s failed (%s: %s); the table is unchanged", out, type(exc).__name__, exc)
    return done


def _generation(rows: list[dict[str, Any]]) -> int | None:
    gens = {r.get("store_generation") for r in rows} - {None}
    return max(gens) if gens else None


def run_refresh(results: str | Path, store: str | None = None, **kw: Any) -> RefreshReport:
    """Call the flow against :func:`flows.runners.prefect_api`."""
    from flows.runners import run_flow
    from storage.fs import store_location

    return run_flow(refresh_flow, (str(Path(results).expanduser().resolve()),),
                    dict(kw, store=store_location(store) if store else None), "threads", None, 2)
