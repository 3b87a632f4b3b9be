"""``ragbatch show RESULTS.parquet [QUESTION_ID]``: the answer report's cards in the terminal.

The same data as RESULTS.report.html (tasks/reporting/cards.py). Text from the results is never parsed as markup: it is
printed as ``rich.text.Text`` (styles attached, no markup), and error messages go through ``rich.markup.escape``,
so a question holding ``[link=…]`` or ``[/]`` prints as written. (``escape`` alone is not enough for pieces of
text: it doubles a trailing backslash on the assumption that a tag follows, so "C:\\" would print twice.)
Every user string also goes through :func:`storage.reports.escape.terminal_text` (here :func:`text` and
:func:`safe`, which
the other commands use too): an escape sequence or a bidi override in the data is shown, never obeyed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from storage.reports.escape import terminal_text

if TYPE_CHECKING:
    from storage.runs.results import ResultRow

# The same styles as the HTML page: yellow supports the RAG answer, blue is a gold answer, green is both.
MARK_STYLES = {frozenset({"support"}): "black on yellow", frozenset({"gold"}): "black on bright_cyan",
               frozenset({"support", "gold"}): "black on bright_green"}


def text(value: object, style: str = "") -> Text:
    """User text as a rich ``Text``: never parsed as markup, control characters shown (module docstring)."""
    return Text(terminal_text(value), style)


def safe(value: object) -> str:
    """User text inside a markup string: markup escaped, control characters shown."""
    return escape(terminal_text(value))


def _clip(text: str, n: int) -> str:
    t = " ".join(str(text).split())
    return t if len(t) <= n else t[:n] + "…"


def _load(results: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    from storage.runs.results import config_path, read_results

    path = results.expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such result table (the .parquet file `ragbatch answer --out` wrote)")
    try:
        rows = read_results(path).to_pylist()
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets one clear line
        raise ValueError(f"{path}: not a readable result table ({exc})") from exc
    cfg = config_path(path.resolve())
    config = json.loads(cfg.read_text()) if cfg.is_file() else None
    return rows, config


def marked(text: str, marks: dict[str, list[tuple[int, int]]]) -> Text:
    """``text`` with its marked pieces styled; a ``Text`` is never parsed as markup."""
    from tasks.reporting.marks import segments

    out = Text()
    for piece, kinds in segments(text, marks):
        out.append(terminal_text(piece), MARK_STYLES.get(kinds))
    return out


def print_card(console: Console, card: dict[str, Any], chunks: list[list[str]], retriever: str,
               passages: int = 3) -> None:
    """One question: both answers side by side, their diff, labels, and the top passages with their spans."""
    say = console.print
    say(Text.assemble((terminal_text(card["id"]), "bold"), "  ", terminal_text(card["q"])), soft_wrap=True)
    if card["gold"]:
        say(text("gold: " + " | ".join(card["gold"][:5]), "dim"), soft_wrap=True)
    t = Table(show_lines=True, expand=True)
    t.add_column("without retrieval", ratio=1)
    t.add_column("with retrieval", ratio=1)
    right = text(card["a1"])
    if card.get("raw"):
        right.append("\nthe model said: " + terminal_text(card["raw"]), "dim")
    t.add_row(text(card["a0"]), right)
    say(t)
    diff = Text(f"diff ({'changed' if card['ch'] else 'unchanged'}):")
    for op, txt in card["diff"]:
        diff.append(" ")
        diff.append(terminal_text(txt), {"=": None, "-": "red strike", "+": "green"}[op])
    say(diff, soft_wrap=True)
    if card.get("v") and card["v"] != "same":
        say(Text.assemble("verdict: ", (terminal_text(card["v"]), "bold")), soft_wrap=True)
    if card.get("dg"):
        say(Text.assemble("diagnosis: ", (terminal_text(card["dg"]), "bold"), " — ", terminal_text(card["why"])),
            soft_wrap=True)
    say("[dim]passages: [black on yellow]supports the RAG answer[/] [black on bright_cyan]gold answer[/] "
        "[black on bright_green]both[/][/]")
    for p in card["p"][:passages]:
        doc, passage = chunks[p["c"]]
        pg = p.get("pg")
        page = "" if not pg else f" pp. {pg[0]}–{pg[1]}" if pg[1] not in (None, pg[0]) else f" p. {pg[0]}"
        cosine = "–" if p["d"] is None else f"{p['d']:.3f}"
        score = "–" if p["s"] is None else f"{p['s']:.4f}"
        head = Text.assemble((f"[{p['r']}] ", "bold"), terminal_text(doc), page,
                             f" · cosine {cosine} · {retriever} rank {p['r']} (score {score}) · support {p['sup']:.2f}")
        if p.get("cite"):
            cpg = p.get("cpg")
            at = "" if not cpg else f" pp. {cpg[0]}–{cpg[1]}" if cpg[1] not in (None, cpg[0]) else f" p. {cpg[0]}"
            head.append(" cited, does not hold the answer" if p.get("uns") else " cited" + at,
                        "bold red" if p.get("uns") else "bold blue")
        say(head, soft_wrap=True)
        say(marked(passage, {"support": p["hs"], "gold": p["hg"]}), soft_wrap=True)
    if len(card["p"]) > passages:
        say(f"[dim]… {len(card['p']) - passages} more passages in the HTML report[/]")


def print_summary(console: Console, report: dict[str, Any], limit: int = 50) -> None:
    """The run's numbers, then one line per question (the first ``limit``)."""
    s = Table(title=text("What retrieval changed: " + report["title"]), show_header=False)
    s.add_column("measure")
    s.add_column("value", justify="right")
    for name, value in report["summary_rows"]:
        s.add_row(text(name), text(value))
    console.print(s)
    t = Table(show_lines=False, expand=True)
    for col, kw in (("id", {"no_wrap": True}), ("question", {"ratio": 3}), ("without retrieval", {"ratio": 2}),
                    ("with retrieval", {"ratio": 2}), ("≠", {"no_wrap": True}), ("verdict", {}), ("diagnosis", {})):
        t.add_column(col, **kw)
    for c in report["cards"][:limit]:
        t.add_row(*(text(v) for v in (c["id"], _clip(c["q"], 120), _clip(c["a0"], 80), _clip(c["a1"], 80),
                                      "yes" if c["ch"] else "no", c.get("v") or "", c.get("dg") or "")))
    console.print(t)
    more = len(report["cards"]) - limit
    if more > 0:
        console.print(f"[dim]… {more} more questions; `ragbatch show FILE QUESTION_ID` prints one[/]")


def show(
    results: Annotated[Path, typer.Argument(help="A result table written by `ragbatch answer` (.parquet)")],
    question_id: Annotated[str | None, typer.Argument(help="Print this question's card (default: the summary)")]
    = None,
    passages: Annotated[int, typer.Option("--passages", "-p", help="Passages to print per card")] = 3,
    changes: Annotated[bool, typer.Option("--changes", help="What the last `ragbatch refresh` changed "
                                          "(RESULTS.changes.parquet)")] = False,
) -> None:
    """Print a result table's summary, or one question's card: both answers, the diff, the top passages."""
    from tasks.reporting.cards import ChunkTable, build_card, build_report

    console = Console(emoji=False, highlight=False)
    err = Console(stderr=True, emoji=False, highlight=False)
    if changes:
        print_changes(console, err, results)
        return
    try:
        rows, config = _load(results)
    except (OSError, ValueError) as exc:
        err.print(f"[bold red]error:[/] {safe(exc)}", soft_wrap=True)
        raise typer.Exit(code=2) from None
    retriever = str((rows[0].get("retriever") if rows else None) or "")
    if question_id is None:
        print_summary(console, build_report(rows, config, title=results.name))
        return
    row = next((r for r in rows if str(r.get("question_id")) == question_id), None)
    if row is None:
        err.print(f"[bold red]error:[/] no question {safe(repr(question_id))} in {safe(results)} "
                  f"({len(rows)} questions; `ragbatch show {safe(results)}` lists them)", soft_wrap=True)
        raise typer.Exit(code=2)
    chunks = ChunkTable()
    print_card(console, build_card(row, chunks), chunks.rows, retriever, passages)


def print_answers(console: Console, rows: list[ResultRow]) -> None:
    """The with/without table that `answer` and `demo` print, one row per question."""
    from storage.reports.markdown import cited_where

    table = Table(title="What retrieval changed", show_lines=True, expand=True)
    table.add_column("id", no_wrap=True)
    table.add_column("question", ratio=3)
    table.add_column("without retrieval", ratio=2)
    table.add_column("with retrieval", ratio=2)
    table.add_column("≠", no_wrap=True)
    table.add_column("top document", ratio=2, overflow="fold")
    table.add_column("cites", ratio=2, overflow="fold")  # ~ marks a citation inferred from the passages
    for r in rows:
        doc = r.doc_ids[0].split(".jsonl#", 1)[-1] if r.doc_ids else ""  # drop the JSONL file name
        dense = r.dense_scores  # a cosine tells a reader more than an RRF score ("0.033" for every top hit)
        score = f"cosine {dense[0]:.3f}" if dense and dense[0] == dense[0] else f"score {r.scores[0]:.3f}"
        top = f"{doc} ({score})" if r.chunk_ids else "-"
        gold = f"\n[dim]gold: {safe(' | '.join(r.gold_answers[:2]))}[/]" if r.gold_answers else ""
        table.add_row(safe(str(r.question_id)), safe(r.question) + gold, safe(r.no_rag_answer),
                      safe(r.rag_answer), "yes" if r.answers_differ else "no", safe(top),
                      safe(cited_where(r.citations)))
    console.print(table)


def print_changes(console: Console, err: Console, results: Path) -> None:
    """The last refresh's change table: every question whose evidence, text or answer changed, the passages that
    left and entered, and both RAG answers; unchanged questions are counted, not listed."""
    import pyarrow.parquet as pq

    from storage.runs.revisions import changes_table_path
    from tasks.reporting.changes import listed

    path = changes_table_path(results)
    if not path.is_file():
        err.print(f"[bold red]error:[/] {safe(path)}: no change table (run `ragbatch refresh {safe(results)}` first)",
                  soft_wrap=True)
        raise typer.Exit(code=2)
    rows = pq.read_table(path).to_pylist()
    t = Table(title=f"What the last refresh of {results.name} changed", show_lines=True, expand=True)
    for col, kw in (("id", {"no_wrap": True}), ("status", {}), ("re-generated", {}), ("because", {"ratio": 2}),
                    ("passages left", {"ratio": 2}), ("passages entered", {"ratio": 2}), ("before", {"ratio": 2}),
                    ("after", {"ratio": 2}), ("verdict", {})):
        t.add_column(col, **kw)
    shown = [r for r in rows if listed(r)]
    for r in shown:
        verdict = (f"{r.get('old_verdict')} → {r.get('new_verdict')}" if r.get("verdict_changed")
                   else r.get("new_verdict") or "")
        t.add_row(*(text(v) for v in (r["question_id"], r["status"], "yes" if r["regenerated"] else "no",
                                      "\n".join(r.get("documents") or []), "\n".join(r["left"]),
                                      "\n".join(r["entered"]), _clip(r["old_rag_answer"], 80),
                                      _clip(r["new_rag_answer"], 80), verdict)))
    console.print(t)
    console.print(f"{len(rows) - len(shown)} questions unchanged (same evidence, same answers)")
