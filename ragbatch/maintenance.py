"""Maintenance commands: ``verify`` a store end to end, ``compact`` its tombstoned rows, ``cache prune`` the
answer cache."""

from __future__ import annotations

from typing import Annotated

import typer

from ragbatch.common import StoreOption, console, err, fail
from ragbatch.show import safe
from storage.reports.escape import terminal_text


def verify(store: StoreOption) -> None:
    """Check STORE end to end (checksums, headers, row counts, live rows, norms); exit 1 on any problem, 2 when it
    could not be checked at all (no such store, an unreachable endpoint)."""
    from storage.store import open_store

    try:
        st = open_store(store)
        if not st.exists():  # nothing to check is not an inconsistent store (exit 1)
            raise FileNotFoundError(f"no index at {store}")
        rep = st.verify()
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback, and not "inconsistent" (exit 1)
        err.print(f"[bold red]could not check[/] {safe(store)}: {safe(f'{type(exc).__name__}: {exc}'[:500])}",
                  soft_wrap=True)
        raise typer.Exit(code=2) from None
    for problem in rep.problems:
        console.print(f"problem: {terminal_text(problem)}", highlight=False, markup=False, soft_wrap=True)
    if rep.problems:
        err.print(f"[bold red]{len(rep.problems)} problem(s)[/] in {safe(str(rep.store))}"
                  + (f"; `ragbatch index DOCS --store {safe(store)} --repair` re-embeds the documents of the "
                     f"{len(rep.damaged_shards)} damaged shard(s)" if rep.damaged_shards else ""), soft_wrap=True)
        raise typer.Exit(code=1)
    console.print(f"OK {safe(str(rep.store))}: generation {rep.generation}, {rep.documents} documents, "
                  f"{rep.live_rows} live rows of {rep.total_rows} in {rep.shards} shards, {len(rep.orphans)} orphan "
                  f"files; BM25 index {rep.bm25}; {rep.seconds:.1f}s", highlight=False, soft_wrap=True)


def compact(
    store: StoreOption,
    min_dead_ratio: Annotated[float, typer.Option(help="Rewrite shards with more than this share of dead rows")] = 0.0,
    wait: Annotated[float, typer.Option(help="Seconds to wait for another writer's lock")] = 0.0,
) -> None:
    """Rewrite shards holding tombstoned rows into shards of live rows only (embeddings copied, not recomputed)."""
    from storage.store import open_store

    try:
        r = open_store(store).compact(min_dead_ratio, lock_wait_s=wait)
    except Exception as exc:  # noqa: BLE001
        fail(exc)
    if not r.compacted:
        console.print(f"nothing to compact: no shard has more than {min_dead_ratio:.0%} dead rows (dead ratio "
                      f"{r.dead_ratio_before:.1%}, {r.shards_before} shards)", highlight=False, soft_wrap=True)
        return
    console.print(f"compacted {len(r.compacted)} shards into {len(r.written)}: {r.dead_rows_dropped} dead rows "
                  f"dropped, {r.rows_copied} rows copied, {r.bytes_freed / 1e6:.1f} MB freed; shards "
                  f"{r.shards_before} → {r.shards_after}, dead ratio {r.dead_ratio_before:.1%} → "
                  f"{r.dead_ratio_after:.1%}; generation {r.generation}; {r.seconds:.1f}s", highlight=False,
                  soft_wrap=True)


def cache(
    action: Annotated[str, typer.Argument(help="prune: drop the least recently used answers beyond the bound")],
    max_entries: Annotated[int | None, typer.Option(help="Keep at most this many answers (default: "
                                                    "$RAGBATCH_ANSWER_CACHE_ENTRIES or 200,000)")] = None,
) -> None:
    """The answer cache ($RAGBATCH_HOME/answer-cache): ``prune`` it to its bound (every answer run does too)."""
    from storage.runs.answer_cache import AnswerCache

    if action != "prune":
        fail(typer.BadParameter(f"unknown cache action {action!r}: use prune"))
    c = AnswerCache()
    if max_entries is not None and max_entries < 0:
        fail(typer.BadParameter(f"--max-entries {max_entries}: must be at least 0"))
    removed = c.prune(max_entries)
    console.print(f"answer cache {safe(str(c.root))}: {removed} entries pruned, {len(c.entries())} kept",
                  highlight=False, soft_wrap=True)
