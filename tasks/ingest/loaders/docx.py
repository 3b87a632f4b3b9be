"""Word documents through python-docx (MIT): paragraphs and headings in order, one line per table row.

A zip bomb is refused from its declared sizes before anything is inflated (``base.check_zip``).
"""

from __future__ import annotations

import io
import zipfile

from tasks.ingest.loaders.base import LoadError, WholeFileLoader, check_zip, clean_text, register


@register
class DocxLoader(WholeFileLoader):
    format = "docx"
    suffixes = (".docx",)

    def extract(self, raw: bytes) -> tuple[str, str, list[int] | None]:
        return (*extract_docx(raw), None)


def extract_docx(raw: bytes) -> tuple[str, str]:
    """(text, title): body paragraphs and tables in document order; a table row is ``cell | cell | …``."""
    import docx
    from docx.table import Table

    if not raw.strip():
        raise LoadError("empty file")
    if not zipfile.is_zipfile(io.BytesIO(raw)):
        raise LoadError("not a DOCX file (not a zip archive; an old binary .doc must be saved as .docx first)")
    check_zip(raw)  # before python-docx inflates anything: a 1 MB file can hold 1 GiB of XML
    try:
        d = docx.Document(io.BytesIO(raw))
        lines: list[str] = []
        title = (d.core_properties.title or "").strip()
        for block in d.iter_inner_content():
            if isinstance(block, Table):
                for row in block.rows:
                    cells, seen = [], set()
                    for cell in row.cells:  # a merged cell repeats: keep it once
                        if id(cell._tc) not in seen:
                            seen.add(id(cell._tc))
                            cells.append(" ".join(cell.text.split()))
                    if any(cells):
                        lines.append(" | ".join(cells))
                continue
            line = block.text.strip()
            if not line:
                continue
            style = (block.style.name if block.style is not None else "") or ""
            if not title and style in ("Title", "Heading 1"):
                title = line
            lines.append(line)
    except LoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged package raises KeyError, ValueError, lxml errors…
        raise LoadError(f"unreadable DOCX ({type(exc).__name__}: {exc})") from exc
    text = clean_text("\n".join(lines)).strip()
    if not text:
        raise LoadError("DOCX without text")
    return text, title
