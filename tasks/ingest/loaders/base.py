"""The loader interface and registry: one small module per file format, found by suffix.

A loader turns one file's bytes into documents. Whole-file problems raise :class:`LoadError` (the file is
named and skipped, and a version indexed before is kept); problems of one record inside a file (a CSV row,
a JSONL line) are returned as messages and the rest of the file loads.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, ClassVar


class LoadError(ValueError):
    """A file that cannot be loaded as a whole; the message says why (without the file name)."""


@dataclass
class Document:
    doc_id: str
    path: str
    text: str
    sha256: str
    size: int
    mtime: float
    metadata: dict[str, Any] = field(default_factory=dict)
    format: str = "text"  # the loader's format: text, jsonl, pdf, html, docx, csv
    title: str = ""
    page_offsets: list[int] | None = None  # PDF: the char offset in ``text`` where page i + 1 starts
    row: int | None = None  # CSV/TSV: the 1-based data row (the header is row 0)

    def page_at(self, char: int) -> int | None:
        """The 1-based page holding ``char`` (``None`` for formats without pages)."""
        if not self.page_offsets:
            return None
        return max(1, bisect.bisect_right(self.page_offsets, max(char, 0)))


class Loader:
    """One format. Subclasses set ``format`` and ``suffixes`` and implement :meth:`load`.

    ``text_input``: the file must be UTF-8 text without NUL bytes (checked before :meth:`load`, with the
    messages plain text always had); binary formats (PDF, DOCX) check their own bytes.
    """

    format: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]
    text_input: ClassVar[bool] = True

    def load(self, rel: str, raw: bytes, mtime: float) -> tuple[list[Document], list[str]]:
        raise NotImplementedError

    def document(self, rel: str, raw: bytes, mtime: float, text: str, **kw: Any) -> Document:
        """A whole-file document: id = path, hash of the file's bytes."""
        meta = {"source": rel, **kw.pop("metadata", {})}
        return Document(rel, rel, text, hashlib.sha256(raw).hexdigest(), len(raw), mtime, meta, self.format, **kw)


class WholeFileLoader(Loader):
    """A binary format read as one document per file: subclasses implement :meth:`extract` only."""

    text_input = False

    def extract(self, raw: bytes) -> tuple[str, str, list[int] | None]:
        """(text, title or "", page start offsets or None), or :class:`LoadError`."""
        raise NotImplementedError

    def load(self, rel: str, raw: bytes, mtime: float) -> tuple[list[Document], list[str]]:
        text, title, offsets = self.extract(raw)
        extra: dict[str, Any] = {} if offsets is None else {"page_offsets": offsets,
                                                            "metadata": {"pages": len(offsets)}}
        return [self.document(rel, raw, mtime, text, title=title or PurePosixPath(rel).name, **extra)], []


_REGISTRY: dict[str, Loader] = {}


def register(cls: type[Loader]) -> type[Loader]:
    """Class decorator: make ``cls`` the loader of its suffixes (a suffix has one loader)."""
    for suffix in cls.suffixes:
        if suffix in _REGISTRY and type(_REGISTRY[suffix]) is not cls:
            raise ValueError(f"suffix {suffix} has two loaders: {type(_REGISTRY[suffix]).__name__} and {cls.__name__}")
        _REGISTRY[suffix] = cls()
    return cls


def registry() -> dict[str, Loader]:
    return _REGISTRY


def clean_text(text: str) -> str:
    """Extracted text without NULs (PDF fonts emit them) and with Unix newlines."""
    return text.replace("\x00", "").replace("\r\n", "\n").replace("\r", "\n")


def env_count(name: str, default: int) -> int:
    """A limit read from the environment variable ``name`` (``default`` when unset): a whole number >= 1."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{name}={raw!r}: must be a whole number, at least 1")
    return int(raw)


UNZIPPED_ENV = "RAGBATCH_MAX_UNZIPPED_MB"
MAX_UNZIPPED_MB = 256  # a DOCX's XML and media together; a 1,000-page manual is ~20 MB unzipped
MAX_RATIO = 100  # typical XML compresses 5-20x; a member past 100x (and past 1 MiB) is built to explode


def check_zip(raw: bytes) -> None:
    """Refuse a zip (DOCX, …) whose members would inflate past the limits, before anything is extracted.

    Python's ``zipfile`` never inflates a member past its declared size (and checks its CRC), so the declared
    sizes bound the memory, as the stdlib docs advise: the total against ``$RAGBATCH_MAX_UNZIPPED_MB`` (default
    256), and every member over 1 MiB against a compression ratio of 100.
    """
    limit = env_count(UNZIPPED_ENV, MAX_UNZIPPED_MB) << 20
    try:
        members = zipfile.ZipFile(io.BytesIO(raw)).infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise LoadError(f"damaged zip archive ({exc})") from exc
    total = sum(m.file_size for m in members)
    if total > limit:
        raise LoadError(f"too large: {total >> 20} MB unzipped, more than the limit of {limit >> 20} MB "
                        f"({UNZIPPED_ENV}); a zip bomb?")
    for m in members:
        if m.file_size > 1 << 20 and m.file_size > MAX_RATIO * max(m.compress_size, 1):
            raise LoadError(f"zip member {m.filename[:100]!r} inflates {m.file_size // max(m.compress_size, 1)}x "
                            f"({m.file_size >> 20} MB from {m.compress_size >> 10} KB): a zip bomb?")
