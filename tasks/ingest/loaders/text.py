"""Plain text and Markdown (one document per file) and JSONL (one document per line)."""

from __future__ import annotations

import hashlib
from pathlib import PurePosixPath
from typing import Any

from tasks.ingest.jsonl import bytes_lines, jsonl_rows
from tasks.ingest.loaders.base import Document, Loader, register


@register
class TextLoader(Loader):
    format = "text"
    suffixes = (".txt", ".text", ".md", ".markdown", ".rst")

    def load(self, rel: str, raw: bytes, mtime: float) -> tuple[list[Document], list[str]]:
        return [self.document(rel, raw, mtime, raw.decode("utf-8"), title=PurePosixPath(rel).name)], []


@register
class JsonlLoader(Loader):
    """One document per line: a ``text`` field plus metadata; id = ``<file>#<id field or line-N>``."""

    format = "jsonl"
    suffixes = (".jsonl",)

    def load(self, rel: str, raw: bytes, mtime: float) -> tuple[list[Document], list[str]]:
        docs: list[Document] = []
        errors: list[str] = []
        for row in jsonl_rows(bytes_lines(raw)):
            n, line, obj = row.n, row.text, row.obj
            if obj is None:
                errors.append(f"{rel}: line {n}: {row.problem}")
                continue
            if not isinstance(obj.get("text"), str) or not obj["text"].strip():
                errors.append(f"{rel}: line {n}: needs a non-empty string field 'text'")
                continue
            key, problem = record_id(obj.get("id"), n, "line")
            if problem is None and "\x00" in obj["text"]:
                problem = "'text' contains NUL characters (\\u0000)"
            if problem:
                errors.append(f"{rel}: line {n}: {problem}")
                continue
            meta = {k: v for k, v in obj.items() if k != "text"}
            meta["source"] = rel
            title = obj["title"] if isinstance(obj.get("title"), str) else f"{rel}#{key}"
            docs.append(Document(f"{rel}#{key}", rel, obj["text"], hashlib.sha256(line.encode()).hexdigest(),
                                 len(line.encode()), mtime, meta, self.format, title))
        if not docs and not errors:
            errors.append(f"{rel}: no documents in JSONL file")
        return docs, errors


def record_id(value: Any, n: int, unit: str) -> tuple[str, str | None]:
    """The question loader's id rules: a string or an integer; missing, null or blank means ``<unit>-N``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return f"{unit}-{n}", None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value), None
    if isinstance(value, str):
        if "\x00" in value:
            return "", "'id' contains NUL characters"
        return value.strip(), None
    return "", f"'id' must be a string or an integer, got {type(value).__name__}"
