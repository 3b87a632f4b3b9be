"""The index flow: load → diff against the manifest → chunk + embed changed documents → commit."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.naming import run_name
from flows.runners import in_order
from flows.stopping import StopSignal, stop_between_batches
from storage.store import CompactReport, open_store
from tasks.config import IndexConfig, apply_changes
from tasks.indexing.embed import EmbedderConfig, resolve_embedder
from tasks.indexing.plan import (
    BatchResult,
    IndexPlan,
    MassRemovalError,
    chunk_and_embed,
    commit_batches,
    compact_if_needed,
    compaction_due,
    document_batches,
    large_documents,
    plan_index,
    removal_refusal,
)
from tasks.ingest.chunk import ChunkSettings
from tasks.ingest.load import Document, LoadResult, load_documents


@dataclass
class IndexReport:
    store: str
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: int = 0
    skipped_files: list[str] = field(default_factory=list)
    repaired: int = 0  # documents re-embedded because their shard was missing or corrupt (repair=True)
    chunks_embedded: int = 0
    shards_written: int = 0
    live_chunks: int = 0
    shards: int = 0
    documents: int = 0
    seconds: float = 0.0
    embedded_doc_ids: list[str] = field(default_factory=list)
    removed_doc_ids: list[str] = field(default_factory=list)
    rebuild_reason: str | None = None
    dry_run: bool = False
    removal_refused: str | None = None  # why the run was (dry run: would be) refused, see removal_refusal
    compacted_shards: int = 0  # shards rewritten by the automatic compaction at the end of the run
    dead_rows_dropped: int = 0
    dead_ratio: float = 0.0  # tombstoned share of the stored rows after the run
    refreshed: list[str] = field(default_factory=list)  # result tables refreshed after the run (refresh_results)
    bm25_docs_deleted: int = 0  # documents deleted from / added to the on-disk BM25 index by this run
    bm25_docs_added: int = 0
    bm25_rebuilt: bool = False  # the BM25 index was missing or unreadable and was rebuilt from the live chunks

    def to_dict(self) -> dict:
        return asdict(self)


@task(name="load-documents", cache_policy=NO_CACHE)
def load_task(docs_dir: str, follow_symlinks: bool) -> LoadResult:
    result = load_documents(docs_dir, follow_symlinks=follow_symlinks)
    logger = get_run_logger()
    for err in result.errors:
        logger.warning("skipped %s", err)
    logger.info("%d documents from %d files (%d problems)", len(result.documents), result.files, len(result.errors))
    return result


@task(name="resolve-embedder", cache_policy=NO_CACHE)
def resolve_task(embedder: str) -> EmbedderConfig:
    return resolve_embedder(embedder)


@task(name="plan", cache_policy=NO_CACHE)
def plan_task(store: str, loaded: LoadResult, config: EmbedderConfig, settings: ChunkSettings,
              damaged_shards: set[str] = frozenset()) -> IndexPlan:
    plan = plan_index(open_store(store), loaded.documents, config, settings, loaded.failed_paths, damaged_shards)
    logger = get_run_logger()
    logger.info("diff: %s", plan.summary())
    if plan.rebuild_reason:
        logger.warning(plan.rebuild_reason)
    for doc_id in plan.kept_unreadable:
        logger.warning("kept the indexed version of %s: its file could not be read this time", doc_id)
    return plan


@task(name="chunk-embed-batch", cache_policy=NO_CACHE)
def embed_batch_task(
    store: str, docs: list[Document], config: EmbedderConfig, settings: ChunkSettings, device: str | None
) -> BatchResult:
    result = chunk_and_embed(open_store(store), docs, config, settings, device=device)
    get_run_logger().info(
        "%d documents → %d chunks in %.1fs (%.1f chunks/s embedding)",
        result.documents, result.chunks, result.seconds, result.embed_per_s,
    )
    return result


@task(name="compact", cache_policy=NO_CACHE)
def compact_task(store: str, compact_dead_ratio: float) -> CompactReport | None:
    rep = compact_if_needed(open_store(store), compact_dead_ratio)
    if rep is not None:
        get_run_logger().info(
            "compacted %d shards into %d: %d dead rows dropped, %d rows copied, %.1f MB freed, %.1fs",
            len(rep.compacted), len(rep.written), rep.dead_rows_dropped, rep.rows_copied, rep.bytes_freed / 1e6,
            rep.seconds,
        )
    return rep



@flow(name="index", flow_run_name=run_name("index", "store"), log_prints=True)
def index_flow(
    docs_dir: str,
    store: str,
    config: IndexConfig | None = None,
    device: str | None = None,
    dry_run: bool = False,
    lock_wait_s: float = 0.0,
    parallel_batches: int = 1,
    repair: bool = False,
    refresh_results: str | None = None,
    **changes: Any,
) -> IndexReport:
    """Index ``docs_dir`` into ``store`` incrementally (settings: ``config``); each batch is committed as it finishes.

    ``changes`` are loose settings of :class:`tasks.config.IndexConfig` (``batch_docs=2``) applied to ``config``.
    When more than ``compact_dead_ratio`` of the stored rows are tombstoned at the end, the store is
    compacted (``1`` never compacts). Removals are committed with the run's last batch, so a killed run
    keeps every document of the generation before it; a run that would remove more than
    ``max_removal_ratio`` of the indexed documents is refused unless ``allow_mass_removal``, and one that
    would empty the index always is (see tasks/indexing/plan.py ``removal_refusal``). ``repair`` verifies the store
    first and re-embeds the documents whose shards are missing or corrupt, so a damaged store becomes consistent
    again (a plain run trusts the committed generation and does not read every shard). ``refresh_results``: a
    results folder (the inbox's); when the run changed any document, every table its ledger lists is refreshed
    (flows/refresh.py), each in a flow run of its own; a run that changed nothing refreshes nothing.
    """
    (cfg,) = apply_changes(changes, config or IndexConfig())
    t0 = time.perf_counter()
    logger = get_run_logger()
    settings = ChunkSettings(cfg.chunk_tokens, cfg.overlap_tokens)
    config = resolve_task(cfg.embedder)
    loaded = load_task(docs_dir, cfg.follow_symlinks)
    st = open_store(store)
    report = IndexReport(store=str(st.root), skipped_files=loaded.errors, dry_run=dry_run)
    with st.lock(wait_s=lock_wait_s), stop_between_batches("the index run") as stop:  # SIGTERM: after a batch
        damaged = set(st.verify().damaged_shards) if repair and st.exists() else set()
        if damaged:
            logger.warning("repair: %d damaged shards (%s): their documents are re-embedded", len(damaged),
                           ", ".join(sorted(damaged)))
        plan = plan_task(store, loaded, config, settings, damaged)
        report.repaired = len(plan.repaired)
        report.added, report.changed = len(plan.added), len(plan.changed)
        report.unchanged, report.removed = len(plan.unchanged), len(plan.removed)
        report.rebuild_reason = plan.rebuild_reason
        report.removed_doc_ids = plan.removed
        report.removal_refused = removal_refusal(plan, docs_dir, st.root, cfg.max_removal_ratio,
                                                 cfg.allow_mass_removal)
        if report.removal_refused and not dry_run:
            raise MassRemovalError(report.removal_refused)
        if dry_run:
            report.seconds = time.perf_counter() - t0
            return report
        if st.exists():
            st.collect_garbage()  # files of a killed run (uncommitted shards, temp files)
        by_id = {d.doc_id: d for d in loaded.documents}
        todo = [by_id[i] for i in plan.to_embed]
        for warning in large_documents(todo):
            logger.warning(warning)
        batches = document_batches(todo, cfg.batch_docs, cfg.batch_chars)
        finished = _run_batches(store, batches, config, settings, device, parallel_batches, stop)
        meta, results = commit_batches(st, plan, finished, len(batches), config.fingerprint, config.dim)
        if len(results) < len(batches):  # stopped by a signal (flows/stopping.py)
            raise stop.stopped("nothing was committed (a change of embedder commits only at its end)"
                               if plan.rebuild_reason else
                               f"{len(results)} of {len(batches)} document batches were committed")
        due = compaction_due(meta, cfg.compact_dead_ratio)
        compacted = compact_task(store, cfg.compact_dead_ratio) if due else None
        if compacted is not None:
            report.compacted_shards, report.dead_rows_dropped = len(compacted.compacted), compacted.dead_rows_dropped
            meta = st.meta()
        if st.exists():
            st.sync_bm25(meta)  # a no-op unless a killed run committed without it (every commit syncs it)
        report.bm25_docs_deleted = sum(b.docs_deleted for b in st.bm25_syncs)
        report.bm25_docs_added = sum(b.docs_added for b in st.bm25_syncs)
        report.bm25_rebuilt = any(b.rebuilt for b in st.bm25_syncs)
        report.dead_ratio = meta.dead_ratio
        report.chunks_embedded = sum(r.chunks for r in results)
        report.shards_written = sum(1 for r in results if r.chunks)
        report.embedded_doc_ids = [d.doc_id for b in batches for d in b]
    report.live_chunks, report.shards, report.documents = meta.live_rows, len(meta.shards), meta.documents
    report.seconds = time.perf_counter() - t0
    logger.info(
        "index %s: +%d ~%d =%d -%d documents, %d chunks embedded, %d live chunks in %d shards, BM25 -%d +%d "
        "documents%s, %.1fs",
        st.root, report.added, report.changed, report.unchanged, report.removed,
        report.chunks_embedded, report.live_chunks, report.shards, report.bm25_docs_deleted, report.bm25_docs_added,
        " (rebuilt)" if report.bm25_rebuilt else "", report.seconds,
    )
    _publish(report)
    if refresh_results and not dry_run and (report.added or report.changed or report.removed):
        from flows.refresh import refresh_ledger  # answers follow the documents (issue 21)

        report.refreshed = refresh_ledger(refresh_results)
    return report


def _run_batches(
    store: str, batches: list[list[Document]], config: EmbedderConfig, settings: ChunkSettings,
    device: str | None, parallel: int, stop: StopSignal,
) -> Iterator[BatchResult]:
    """Each batch chunked, embedded and written by a task on the runner (``parallel`` in flight), in order; none
    started once ``stop`` is requested."""
    for _, result in in_order(lambda b: embed_batch_task.submit(store, b, config, settings, device), batches,
                              parallel, stop.requested):
        yield result


def _publish(report: IndexReport) -> None:
    rows = [
        {"what": k, "count": getattr(report, k)}
        for k in (
            "added", "changed", "unchanged", "removed", "chunks_embedded", "shards_written", "live_chunks", "shards",
            "compacted_shards", "dead_rows_dropped",
        )
    ]
    rows.append({"what": "skipped files", "count": len(report.skipped_files)})
    create_table_artifact(key="index-diff", table=rows, description=f"Index run on {report.store}")


def run_index(
    docs_dir: str | Path, store: str | Path, config: IndexConfig | None = None, *, runner: str = "threads",
    dask_address: str | None = None, dask_workers: int = 2, **kw: Any,
) -> IndexReport:
    """Call the flow with absolute paths (runs are named ``index-<store>-<timestamp>``); ``kw``: the flow's other
    arguments and loose settings (``batch_docs=2``).

    ``runner="dask"`` runs the batch tasks on a Dask cluster (``flows/runners.py``) with one batch in flight
    per worker (``parallel_batches``, unless given).
    """
    from flows.runners import run_flow
    from storage.fs import store_location

    args = str(Path(docs_dir).expanduser().resolve()), store_location(store)  # a path or s3:// URL
    return run_flow(index_flow, args, dict(kw, config=config), runner, dask_address, dask_workers)
