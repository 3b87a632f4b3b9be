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

from storage.safepath import UnsafePathError, path_problem, read_inside

TEXT_SUFFIXES = {".txt", ".text", ".md", ".markdown", ".rst"}
JSONL_SUFFIXES = {".jsonl"}
SUPPORTED = TEXT_SUFFIXES | JSONL_SUFFIXES
KEEP_INDEXED = ("symlink loop", "broken symlink", "unreadable")  # problems that keep a file's indexed version


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


def load_documents(root: str | Path, follow_symlinks: bool = False) -> LoadResult:
    """All supported documents under ``root`` (a folder or one file), sorted by id.

    Symlinked files are read only when they resolve inside ``root`` (``follow_symlinks``, unsafe: any
    target); symlinked folders are never followed. See storage/safepath.py.
    """
    root = Path(root).expanduser().resolve()
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such file or folder")
    base = root.parent if root.is_file() else root
    files = [root] if root.is_file() else _list_files(root)
    docs: list[Document] = []
    errors: list[str] = []
    failed: set[str] = set()
    for path in files:
        rel = path.relative_to(base).as_posix()
        problem = None if path == root else path_problem(path, base, follow_symlinks)
        if problem:
            errors.append(f"{rel}: {problem}")
            if problem.startswith(KEEP_INDEXED):  # maybe passing (a link to an unmounted disk): keep the old version
                failed.add(rel)
            continue
        if path.suffix.lower() not in SUPPORTED:
            errors.append(f"{rel}: unsupported file type {path.suffix or '(none)'} (supported: {_supported()})")
            continue
        try:
            raw, st = read_inside(path, base, follow_symlinks or path == root)
        except UnsafePathError as exc:  # swapped for a link or a special file after it was listed
            errors.append(f"{rel}: {exc.strerror}")
            continue
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
    nul = raw.find(b"\x00")  # anywhere: a NUL past the first block would otherwise end up in chunk text
    if nul >= 0:
        return f"binary file (a NUL byte at offset {nul}); only UTF-8 text is indexed"
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
        key, problem = _jsonl_id(obj.get("id"), n)
        if problem is None and "\x00" in obj["text"]:
            problem = "'text' contains NUL characters (\\u0000)"
        if problem:
            errors.append(f"{rel}: line {n}: {problem}")
            continue
        meta = {k: v for k, v in obj.items() if k != "text"}
        meta["source"] = rel
        digest = hashlib.sha256(line.encode()).hexdigest()
        docs.append(Document(f"{rel}#{key}", rel, obj["text"], digest, len(line.encode()), st.st_mtime, meta))
    if not docs and not errors:
        errors.append(f"{rel}: no documents in JSONL file")
    return docs, errors


def _jsonl_id(value: Any, n: int) -> tuple[str, str | None]:
    """The question loader's id rules: a string or an integer; missing, null or blank means ``line-N``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return f"line-{n}", None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value), None
    if isinstance(value, str):
        if "\x00" in value:
            return "", "'id' contains NUL characters"
        return value.strip(), None
    return "", f"'id' must be a string or an integer, got {type(value).__name__}"


def _list_files(root: Path) -> list[Path]:
    """Every non-hidden entry under ``root`` that could be a document, without descending into linked folders.

    Linked folders are listed too (as entries), so that they are reported instead of silently left out.
    """
    found: list[Path] = []
    for folder, dirs, names in os.walk(root, followlinks=False):
        here = Path(folder)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [here / d for d in dirs if (here / d).is_symlink()]
        found += [here / f for f in names if not f.startswith(".")]
    return sorted(found)


def _supported() -> str:
    return " ".join(sorted(SUPPORTED))
