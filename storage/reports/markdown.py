"""The answer table as Markdown (the Prefect UI's ``answers`` artifact), and how a citation is written for a reader.

Every cell is escaped (storage/reports/escape.py): questions, answers and document ids are user content.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from storage.reports.escape import md_code, md_text
from storage.runs.results import ResultRow


def where(doc_id: str, page_start: int | None, page_end: int | None) -> str:
    """``report.pdf p. 4``, ``report.pdf pp. 4–5``, or the document id alone (no pages: CSV rows carry theirs)."""
    if page_start is None:
        return doc_id
    if page_end is None or page_end == page_start:
        return f"{doc_id} p. {page_start}"
    return f"{doc_id} pp. {page_start}–{page_end}"


def cited_where(cites: list[dict[str, Any]] | None, limit: int = 3) -> str:
    """The cited documents and pages for a table cell, e.g. ``[2] report.pdf p. 4`` (``~`` marks inferred; a mark
    of the model's on a passage that does not hold the answer ends "(unsupported)")."""
    if not cites:
        return ""
    parts = [("~" if c["inferred"] else "") + f"[{c['passage']}] " + where(c["doc_id"], c["page_start"], c["page_end"])
             + (" (unsupported)" if c.get("supported") is False else "") for c in cites[:limit]]
    return "; ".join(parts) + (f" (+{len(cites) - limit})" if len(cites) > limit else "")


def answers_markdown(rows: list[ResultRow], limit: int = 50, report: str | None = None) -> str:
    """A Markdown table of the with/without answers (for the Prefect UI); every cell escaped
    (storage/reports/escape.py).

    ``report``: the HTML report's path, linked above the table (a browser opens it from a file:// link only when
    the UI itself is not served over http, so the path is shown too).
    """
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
        top = cited_where(r.citations) or (r.doc_ids[0] if r.doc_ids else "")  # e.g. [2] a.pdf p. 3
        lines.append(f"| {cell(r.question_id)} | {cell(r.question)} | {cell(r.no_rag_answer)} | "
                     f"{cell(r.rag_answer)} | {'yes' if r.answers_differ else 'no'} | {cell(top)} |")
    if len(rows) > limit:
        lines.append(f"\n… {len(rows) - limit} more rows in the Parquet table")
    return "\n".join(lines)
