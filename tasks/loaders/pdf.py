"""PDF through pypdf (BSD-3, pure Python): text page by page, each page's start offset kept.

Pages are extracted one at a time and only their text is kept, so a 200-page file never holds more than
one page's parsed content. pypdf has no OCR: a file whose pages carry no text is refused as such.
"""

from __future__ import annotations

import io
import logging

from tasks.loaders.base import LoadError, WholeFileLoader, clean_text, register

PAGE_BREAK = "\n\n"  # between pages in the document text


@register
class PdfLoader(WholeFileLoader):
    format = "pdf"
    suffixes = (".pdf",)

    def extract(self, raw: bytes) -> tuple[str, str, list[int] | None]:
        text, offsets, title = extract_pages(raw)
        return text, title, offsets


def extract_pages(raw: bytes) -> tuple[str, list[int], str]:
    """(text, start offset of every page, title) of a PDF, or :class:`LoadError` saying what is wrong."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its recoverable-damage warnings flood the run log
    if not raw.strip():
        raise LoadError("empty file")
    if b"%PDF-" not in raw[:1024]:
        raise LoadError("not a PDF file (no %PDF- header)")
    if b"%%EOF" not in raw[-2048:]:
        raise LoadError("truncated PDF (no %%EOF marker at the end): re-export or re-download it")
    try:
        reader = PdfReader(io.BytesIO(raw))
        if reader.is_encrypted and not reader.decrypt(""):  # an empty user password opens many "protected" files
            raise LoadError("encrypted PDF (it needs a password); decrypt it first, e.g. `qpdf --decrypt`")
        parts: list[str] = []
        offsets: list[int] = []
        pos = 0
        for page in reader.pages:
            offsets.append(pos)
            piece = clean_text(page.extract_text() or "").strip()
            parts.append(piece)
            pos += len(piece) + len(PAGE_BREAK)
        meta = reader.metadata
        title = str(meta.title).strip() if meta is not None and meta.title else ""
    except LoadError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError) as exc:
        raise LoadError(f"corrupt PDF ({type(exc).__name__}: {exc})") from exc
    if not offsets:
        raise LoadError("PDF without pages")
    if not any(parts):
        raise LoadError(f"no text layer — OCR is not supported ({len(offsets)} pages, all without text)")
    return PAGE_BREAK.join(parts), offsets, title
