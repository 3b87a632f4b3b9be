"""PDF through pypdf (BSD-3, pure Python): text page by page, each page's start offset kept.

Pages are extracted one at a time and only their text is kept, so a 200-page file never holds more than
one page's parsed content. pypdf has no OCR: a file whose pages carry no text is refused as such.

Hostile files are refused, each on its own (the rest of the folder is indexed): a page tree that claims or holds
more pages than ``$RAGBATCH_MAX_PDF_PAGES`` (default 5,000, checked on the declared count before the tree is
walked), any stream that inflates past pypdf's own limits (a Flate bomb: ``LimitReachedError``), and a file
whose extraction takes longer than ``$RAGBATCH_PARSE_SECONDS`` or more memory than ``$RAGBATCH_PARSE_MEMORY_MB``
(it runs in a worker process: ``worker.py``).
"""

from __future__ import annotations

import io
import logging

from tasks.ingest.loaders.base import LoadError, WholeFileLoader, clean_text, env_count, register

PAGE_BREAK = "\n\n"  # between pages in the document text
MAX_PAGES_ENV = "RAGBATCH_MAX_PDF_PAGES"
MAX_PAGES = 5000  # a 5,000-page manual still loads; a tree claiming 10^8 pages does not


def max_pdf_pages() -> int:
    """The page cap: ``$RAGBATCH_MAX_PDF_PAGES`` or :data:`MAX_PAGES`; a value that is not a count >= 1 is an error."""
    return env_count(MAX_PAGES_ENV, MAX_PAGES)


@register
class PdfLoader(WholeFileLoader):
    format = "pdf"
    suffixes = (".pdf",)

    def extract(self, raw: bytes) -> tuple[str, str, list[int] | None]:
        from tasks.ingest.loaders.worker import WORKER

        text, offsets, title = WORKER.run(extract_pages, raw, max_pdf_pages())  # time- and memory-boxed
        return text, title, offsets


def extract_pages(raw: bytes, max_pages: int | None = None) -> tuple[str, list[int], str]:
    """(text, start offset of every page, title) of a PDF, or :class:`LoadError` saying what is wrong."""
    from pypdf import PdfReader
    from pypdf.errors import LimitReachedError, PdfReadError

    limit = max_pages or max_pdf_pages()  # outside the try: a bad setting is not a corrupt PDF

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
        _check_page_count(reader, limit)
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
    except LimitReachedError as exc:
        raise LoadError(f"too large to extract: {exc} (pypdf's decompression limit; a compression bomb?)") from exc
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError) as exc:
        raise LoadError(f"corrupt PDF ({type(exc).__name__}: {exc})") from exc
    if not offsets:
        raise LoadError("PDF without pages")
    if not any(parts):
        raise LoadError(f"no text layer — OCR is not supported ({len(offsets)} pages, all without text)")
    return PAGE_BREAK.join(parts), offsets, title


def _check_page_count(reader, limit: int) -> None:
    """Refuse a page tree over the cap: its declared ``/Count`` first (walking a tree that claims 10^8 pages is
    itself the attack), then the pages it really holds."""
    try:
        declared = int(reader.trailer["/Root"]["/Pages"].get("/Count", 0))
    except (KeyError, TypeError, ValueError, AttributeError):
        declared = 0
    for count in (declared, len(reader.pages) if declared <= limit else 0):
        if count > limit:
            raise LoadError(f"{count} pages: more than the limit of {limit} ({MAX_PAGES_ENV}); split the file or "
                            "raise the limit")
