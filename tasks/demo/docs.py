"""A second demo folder of the documents people actually have, generated here (never committed binaries).

``build_docs_demo`` writes a multi-page PDF (fpdf2), an HTML page, a Word file (python-docx), a CSV and a
Markdown note, each holding facts that only it (and, for the PDF, only one page) states, plus questions
about them. The writers are also what the tests and ``benchmarks/load.py`` use to make real files.
fpdf2 is the ``docs-demo`` extra (installed by setup through ``dev``); nothing else needs it.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import zipfile
from pathlib import Path

from storage.atomic import write_bytes_if_changed


def pdf_bytes(pages: list[str], title: str = "", encrypt_password: str | None = None, text: bool = True) -> bytes:
    """A real PDF with one page per string (``text=False``: drawn boxes only, no text layer, like a scan)."""
    try:
        from fpdf import FPDF
    except ImportError as exc:  # pragma: no cover - setup installs it
        raise RuntimeError("writing PDFs needs fpdf2: pip install 'ragbatch[docs-demo]'") from exc
    pdf = FPDF()
    pdf.set_creation_date(dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))  # reproducible bytes and hash
    if title:
        pdf.set_title(title)
    pdf.set_font("Helvetica", size=11)
    for page in pages:
        pdf.add_page()
        if text:
            pdf.multi_cell(0, 6, page)
        else:
            pdf.rect(20, 20, 120, 80, style="F")
    if encrypt_password:
        pdf.set_encryption(owner_password=encrypt_password + "-owner", user_password=encrypt_password)
    return bytes(pdf.output())


def docx_bytes(title: str, paragraphs: list[str], table: list[list[str]] | None = None) -> bytes:
    import docx

    d = docx.Document()
    d.core_properties.title = title
    d.core_properties.created = d.core_properties.modified = dt.datetime(2026, 1, 1)  # reproducible bytes
    d.add_heading(title, level=1)
    for p in paragraphs:
        d.add_paragraph(p)
    if table:
        t = d.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, cell in enumerate(row):
                t.cell(r, c).text = cell
    buf = io.BytesIO()
    d.save(buf)
    out = io.BytesIO()  # the same zip with fixed member times, so equal content gives equal bytes
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            member = zipfile.ZipInfo(info.filename, (2026, 1, 1, 0, 0, 0))
            member.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(member, src.read(info.filename))
    return out.getvalue()


def html_page(title: str, paragraphs: list[str]) -> str:
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    return (f"<!doctype html><html><head><title>{title}</title><script>track('visit')</script>"
            f"<style>p {{ margin: 0 }}</style></head><body><nav><a href='/'>Home</a> <a href='/news'>News</a></nav>"
            f"<header>Port Authority Online</header><article><h1>{title}</h1>{body}</article>"
            f"<footer>Copyright 2026 Port Authority. All rights reserved.</footer></body></html>")


def csv_text(header: list[str], rows: list[list[str]], delimiter: str = ",") -> str:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _report_page(section: str, fact: str) -> str:
    """A page longer than a chunk, its fact last: the chunk that states it starts (and is cited) on this page."""
    routine = " ".join(f"The {section.lower()} section reviews routine item {i} of the year, which the board "
                       f"approved without changes." for i in range(1, 15))
    return f"{section}.\n\n{routine}\n\n{fact}"


REPORT_PAGES = [
    _report_page("Northwind Harbour Annual Report 2025", "The report was approved by the board in February 2026."),
    _report_page("Operations", "The harbour handled 412 cruise ship calls during the year."),
    _report_page("Finances", "The harbour's dredging budget for 2025 was 7.4 million euros, spent mostly on the "
                 "eastern channel."),
    _report_page("Staff", "The harbour master since 2019 is Ingrid Solberg, a former ferry captain."),
    _report_page("Outlook", "A new container crane is planned for the spring of 2027."),
]
DOCS_QUESTIONS = [
    {"id": "dredging", "question": "What was the harbour's dredging budget for 2025?",
     "answers": ["7.4 million euros"]},
    {"id": "master", "question": "Who is the harbour master?", "answers": ["Ingrid Solberg"]},
    {"id": "cruise", "question": "How many cruise ship calls did the harbour handle?", "answers": ["412"]},
    {"id": "lighthouse", "question": "In which year was the Skarv lighthouse built?", "answers": ["1859"]},
    {"id": "ferry", "question": "How long does the ferry to Varnes take?", "answers": ["40 minutes"]},
    {"id": "tide", "question": "What is the tide gauge at Pier 3 called?", "answers": ["Tern-7"]},
]


def docs_demo_files() -> dict[str, bytes]:
    """The demo folder's files by name (deterministic bytes, so a re-build changes nothing)."""
    return {
        "annual-report.pdf": pdf_bytes(REPORT_PAGES, title="Northwind Harbour Annual Report 2025"),
        "lighthouse.html": html_page("The Skarv lighthouse", [
            "The Skarv lighthouse was built in 1859 on the outer skerry and automated in 1978.",
            "Its light reaches 17 nautical miles in clear weather.",
        ]).encode(),
        "ferry-handbook.docx": docx_bytes("Ferry handbook", [
            "Passengers board through gate B.", "The crossing to Varnes takes 40 minutes in calm weather.",
        ], [["Route", "Departures per day"], ["Varnes", "14"], ["Holm", "6"]]),
        "sensors.csv": csv_text(["id", "name", "location", "measures"], [
            ["s1", "Tern-7", "Pier 3", "tide level"], ["s2", "Gull-2", "Breakwater", "wave height"],
            ["s3", "Auk-5", "Harbour mouth", "wind speed"],
        ]).encode(),
        "notes.md": b"# Notes\n\nThe harbour cafe opens at 7 in the morning.\n",
    }


def build_docs_demo(folder: Path) -> tuple[Path, Path]:
    """Write the demo documents into ``folder/docs`` and the questions to ``folder/questions.jsonl``."""
    docs = folder / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    for name, data in docs_demo_files().items():
        write_bytes_if_changed(docs / name, data)
    questions = folder / "questions.jsonl"
    write_bytes_if_changed(questions, "".join(json.dumps(q) + "\n" for q in DOCS_QUESTIONS).encode())
    return docs, questions
