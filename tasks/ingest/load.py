"""Load documents from a folder tree, each file through the loader of its format (tasks/ingest/loaders/).

Plain text, Markdown and JSONL as before, plus PDF, HTML, DOCX and CSV/TSV. A file that cannot be used
(empty, binary, not UTF-8, encrypted, without a text layer, malformed JSONL line or CSV row, unsupported
type) is reported with a message naming it and skipped; the rest of the run goes on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from storage.reports.escape import clip_message
from storage.safepath import UnsafePathError, path_problem, read_inside
from tasks.ingest.loaders import Document, LoadError, loader_for, supported

TEXT_SUFFIXES = {".txt", ".text", ".md", ".markdown", ".rst"}
JSONL_SUFFIXES = {".jsonl"}
SUPPORTED = supported()
KEEP_INDEXED = ("symlink loop", "broken symlink", "unreadable")  # problems that keep a file's indexed version

__all__ = ["Document", "LoadResult", "load_documents", "SUPPORTED"]


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
        loader = loader_for(path.suffix)
        if loader is None:
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
        problem = _check_bytes(raw) if loader.text_input else None
        if problem is None:
            try:
                got, errs = loader.load(rel, raw, st.st_mtime)
            except LoadError as exc:
                problem = str(exc)
            except Exception as exc:  # noqa: BLE001 - a parser's bug or limit costs this file, never the run
                problem = f"could not be read as {loader.format} ({type(exc).__name__}: {str(exc)[:300]})"
        if problem:
            errors.append(f"{rel}: {problem}")
            failed.add(rel)  # a file indexed before keeps that version (it may be mid-write, or re-exported later)
            continue
        docs += got
        errors += errs
    seen: set[str] = set()
    unique: list[Document] = []
    for d in sorted(docs, key=lambda d: d.doc_id):
        if d.doc_id in seen:
            errors.append(f"{d.path}: duplicate document id {d.doc_id!r} (kept the first)")
            continue
        seen.add(d.doc_id)
        unique.append(d)
    return LoadResult(unique, [clip_message(e) for e in errors], files=len(files), failed_paths=failed)


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
