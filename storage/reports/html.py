"""HTML reports rendered from Jinja2 templates (storage/reports/templates/) with autoescaping on.

Data is prepared elsewhere (tasks/reporting/cards.py for the answer report, storage/reports/eval.py for eval); this
module only
renders. The answer report embeds its cards as JSON in a ``<script type="application/json">`` tag and draws them
in the browser, a page at a time, so a 10,000-question report opens; the JSON is written with ``<``, ``>`` and
``&`` as ``\\u`` escapes, so no user text can close the tag, and every card is built with ``textContent``.
"""

from __future__ import annotations

import json
import re
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from storage.atomic import write_bytes_atomic

TEMPLATES = Path(__file__).with_name("templates")
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


def report_path(results: str | Path) -> Path:
    """``RESULTS.report.html`` beside ``RESULTS.parquet``."""
    results = Path(results).expanduser().resolve()
    return results.with_name(results.stem + ".report.html")


def clip(text: object, n: int = 240) -> str:
    """One line of at most ``n`` characters (whitespace collapsed), marked "…" when cut."""
    t = " ".join(str(text).split())
    return t if len(t) <= n else t[:n] + "…"


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["clip"] = clip
    return env


def render(template: str, **context: Any) -> str:
    """Render ``template`` with a fresh CSP nonce (only the page's own scripts run)."""
    return environment().get_template(template).render(nonce=secrets.token_urlsafe(16), **context)


def script_json(data: Any) -> str:
    """JSON safe inside a ``<script>`` element: ``<``, ``>``, ``&`` (and U+2028/9) as ``\\u`` escapes."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                    ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def _utf16(text: str, spans: list) -> list:
    """Code-point offsets → the UTF-16 offsets JavaScript strings use (they differ after an astral character)."""
    extra = [0] * (len(text) + 1)
    for i, ch in enumerate(text):
        extra[i + 1] = extra[i] + (ord(ch) > 0xFFFF)
    return [[s + extra[s], e + extra[e]] for s, e in spans]


def _browser_data(report: dict[str, Any]) -> dict[str, Any]:
    chunks = report["chunks"]
    astral = {i for i, (_, t) in enumerate(chunks) if _ASTRAL.search(t)}
    if astral:
        for c in report["cards"]:
            for p in c["p"]:
                if p["c"] in astral:
                    text = chunks[p["c"]][1]
                    p["hs"], p["hg"] = _utf16(text, p["hs"]), _utf16(text, p["hg"])
    return {"retriever": report["summary"].get("retriever") or "", "chunks": chunks, "cards": report["cards"]}


def render_answer_report(report: dict[str, Any]) -> str:
    """The self-contained page of an answer run (``tasks.reporting.cards.build_report``'s output)."""
    return render("answers.html.j2", title=report.get("title") or "", summary_rows=report["summary_rows"],
                  verdicts=report.get("verdicts", ()), stages=report.get("stages", ()),
                  data_json=script_json(_browser_data(report)))


def write_answer_report(path: str | Path, report: dict[str, Any]) -> Path:
    """Render and write atomically; returns the path."""
    path = Path(path)
    write_bytes_atomic(path, render_answer_report(report).encode())
    return path


def changes_report_path(results: str | Path) -> Path:
    """``RESULTS.changes.html`` beside ``RESULTS.parquet``: what the last refresh changed."""
    results = Path(results).expanduser().resolve()
    return results.with_name(results.stem + ".changes.html")


def write_changes_report(path: str | Path, title: str, summary_rows: list[tuple[str, str]],
                         entries: list[dict[str, Any]], filters: list[tuple[str, int]], unchanged: int) -> Path:
    """The refresh's change page (``tasks.reporting.changes.change_view`` prepares the entries), atomically."""
    path = Path(path)
    page = render("changes.html.j2", title=title, summary_rows=summary_rows, entries=entries, filters=filters,
                  unchanged=unchanged)
    write_bytes_atomic(path, page.encode())
    return path
