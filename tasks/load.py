"""Load documents from a folder tree: plain text, Markdown and JSONL, each with a stable id and hash.

A file that cannot be used (empty, binary, not UTF-8, malformed JSONL line, unsupported type) is
reported with a message naming it and skipped; the rest of the run goes on.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEXT_SUFFIXES = {".txt", ".text", ".md", ".markdown", ".rst"}
JSONL_SUFFIXES = {".jsonl"}
SUPPORTED = TEXT_SUFFIXES | JSONL_SUFFIXES


@dataclass
class Document:
    doc_id: str
    path: str
    text: str
    sha256: str
    size: int
    mtime: float
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadResult:
    documents: list[Document]
    errors: list[str]
    files: int = 0
    failed_paths: set[str] = field(default_factory=set)  # whole files unread: their old entries are kept


def load_documents(root: str | Path) -> LoadResult:
    """All supported documents under ``root`` (a folder or one file), sorted by id."""
    root = Path(root).expanduser().resolve()
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such file or folder")
    base = root.parent if root.is_file() else root
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and not _hidden(p, root))
    docs: list[Document] = []
    errors: list[str] = []
    failed: set[str] = set()
    for path in files:
        rel = path.relative_to(base).as_posix()
        if path.suffix.lower() not in SUPPORTED:
            errors.append(f"{rel}: unsupported file type {path.suffix or '(none)'} (supported: {_supported()})")
            continue
        try:
            raw = path.read_bytes()
            st = path.stat()
        except OSError as exc:
            errors.append(f"{rel}: unreadable ({exc.strerror or exc})")
            failed.add(rel)
            continue
        problem = _check_bytes(raw)
        if problem:
            errors.append(f"{rel}: {problem}")
            failed.add(rel)
            continue
        text = raw.decode("utf-8")
        if path.suffix.lower() in JSONL_SUFFIXES:
            got, errs = _jsonl_documents(rel, text, st)
            docs += got
            errors += errs
        else:
            docs.append(
                Document(rel, rel, text, hashlib.sha256(raw).hexdigest(), len(raw), st.st_mtime, {"source": rel})
            )
    seen: set[str] = set()
    unique: list[Document] = []
    for d in sorted(docs, key=lambda d: d.doc_id):
        if d.doc_id in seen:
            errors.append(f"{d.path}: duplicate document id {d.doc_id!r} (kept the first)")
            continue
        seen.add(d.doc_id)
        unique.append(d)
    return LoadResult(unique, errors, files=len(files), failed_paths=failed)


def _check_bytes(raw: bytes) -> str | None:
    if not raw.strip():
        return "empty file"
    if b"\x00" in raw[:8192]:
        return "binary file (contains NUL bytes); only UTF-8 text is indexed"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
    return None


def _jsonl_documents(rel: str, text: str, st: os.stat_result) -> tuple[list[Document], list[str]]:
    """One document per line: a ``text`` field plus metadata; id = ``<file>#<id field or line N>``."""
    docs: list[Document] = []
    errors: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(f"{rel}: line {n}: not valid JSON ({exc.msg})")
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or not obj["text"].strip():
            errors.append(f"{rel}: line {n}: needs a non-empty string field 'text'")
            continue
        key = obj.get("id", f"line-{n}")
        meta = {k: v for k, v in obj.items() if k != "text"}
        meta["source"] = rel
        digest = hashlib.sha256(line.encode()).hexdigest()
        docs.append(Document(f"{rel}#{key}", rel, obj["text"], digest, len(line.encode()), st.st_mtime, meta))
    if not docs and not errors:
        errors.append(f"{rel}: no documents in JSONL file")
    return docs, errors


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _supported() -> str:
    return " ".join(sorted(SUPPORTED))
