"""The inbox flow: every new question file in INBOX → the answer flow → RESULTS (ledger), or INBOX/failed/."""

from __future__ import annotations

import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.answer import answer_flow
from flows.naming import run_name
from storage.outputs import check_outputs
from storage.runs.inbox import InboxFile, InboxScan, move_failed, record_answered, scan_inbox
from storage.store import open_store
from tasks.config import GenerationConfig, RetrievalConfig, apply_changes


@dataclass
class InboxReport:
    inbox: str
    results: str
    answered: list[str] = field(default_factory=list)  # result files written
    failed: list[str] = field(default_factory=list)  # where the failed files were moved
    skipped: list[str] = field(default_factory=list)  # already answered (same name and sha256)
    ignored: list[str] = field(default_factory=list)  # not question files
    questions: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@task(name="scan-inbox", cache_policy=NO_CACHE)
def scan_task(inbox: str, results: str) -> InboxScan:
    scan = scan_inbox(inbox, results)
    logger = get_run_logger()
    logger.info("%d new question files, %d already answered, %d ignored", len(scan.new),
                len(scan.already_answered), len(scan.ignored))
    for name in scan.ignored:
        logger.warning("ignored %s: not a question file (.jsonl, .csv, .parquet)", name)
    for problem in scan.refused:
        logger.warning("refused %s", problem)
    return scan


@task(name="record-answered", cache_policy=NO_CACHE)
def record_task(results: str, item: InboxFile, questions: int, question_errors: list[str]) -> None:
    record_answered(results, item, questions, rejected_rows=len(question_errors))


@task(name="move-failed", cache_policy=NO_CACHE)
def move_failed_task(inbox: str, item: InboxFile, error: str) -> str:
    dest = move_failed(inbox, item, error)
    get_run_logger().error("%s failed; moved to %s (error in %s.error.txt)", item.name, dest, dest.name)
    return str(dest)



@flow(name="answer-inbox", flow_run_name=run_name("inbox", "inbox"))
def inbox_flow(
    inbox: str,
    results: str,
    store: str,
    retrieval: RetrievalConfig | None = None,
    generation: GenerationConfig | None = None,
    device: str | None = None,
    **changes: Any,
) -> InboxReport:
    """Answer each new question file in ``inbox`` (one ``answer`` subflow per file) into ``results``.

    ``retrieval`` and ``generation`` are the answer flow's settings (``changes``: loose ones, ``k=1``), the same
    for every file.

    Answered files stay in the inbox and are recorded in ``results/processed.jsonl`` (name + sha256), so the
    next run skips them; a file whose run fails is moved to ``inbox/failed/`` with ``<name>.error.txt``.
    """
    t0 = time.perf_counter()
    rc, gs = apply_changes(changes, retrieval or RetrievalConfig(), generation or GenerationConfig())
    logger = get_run_logger()
    if not open_store(store).exists():  # not the files' fault: fail the run, leave the inbox alone
        raise FileNotFoundError(f"no index at {store}: run the index deployment (or `ragbatch index`) first")
    check_outputs([results], inputs=[inbox], stores=[store])  # the results folder never sits in a store or the inbox
    Path(results).mkdir(parents=True, exist_ok=True)
    scan = scan_task(inbox, results)
    report = InboxReport(inbox=inbox, results=results, skipped=scan.already_answered, ignored=scan.ignored)
    rows = []
    for item in scan.new:
        try:
            rep = answer_flow([item.path], store, item.out, rc, gs, device=device)
        except Exception as exc:  # noqa: BLE001 - a failed file is moved aside, the others go on
            error = f"{type(exc).__name__}: {exc}\n\n" + "".join(traceback.format_exception(exc))
            dest = move_failed_task(inbox, item, error)
            report.failed.append(dest)
            rows.append({"file": item.name, "status": "failed", "questions": 0, "result": dest,
                         "error": f"{type(exc).__name__}: {exc}"[:300]})
            continue
        record_task(results, item, rep.questions, rep.question_errors)
        report.answered.append(item.out)
        report.questions += rep.questions
        rows.append({"file": item.name, "status": "answered", "questions": rep.questions, "result": item.out,
                     "error": f"{len(rep.question_errors)} rows rejected" if rep.question_errors else ""})
    report.seconds = time.perf_counter() - t0
    logger.info("inbox %s: %d files answered (%d questions), %d failed, %d already answered, %.1fs",
                inbox, len(report.answered), report.questions, len(report.failed), len(report.skipped),
                report.seconds)
    if rows:
        create_table_artifact(key="inbox", table=rows, description=f"Inbox run on {inbox} → {results}")
    return report


def run_inbox(inbox: str | Path, results: str | Path, store: str | Path, **kw: Any) -> InboxReport:
    """Call the flow with absolute paths."""
    from storage.fs import store_location

    inbox_s, results_s = (str(Path(p).expanduser().resolve()) for p in (inbox, results))
    return inbox_flow(inbox_s, results_s, store_location(store), **kw)
