"""The question inbox: which files are new, where their results go, the ledger of answered files, failures.

Layout::

    INBOX/<name>.jsonl|.csv|.parquet     question files dropped by users (write elsewhere, then rename in)
    INBOX/failed/<name>                  a file whose run failed, moved aside ...
    INBOX/failed/<name>.error.txt        ... with the error beside it (move it back into INBOX to retry)
    RESULTS/<stem>.parquet               the answers (+ <stem>.config.json, written by the answer flow)
    RESULTS/processed.jsonl              the ledger: one line per answered file (name, sha256, result, ...)

A file is *new* unless the ledger holds its name with the same sha256, so editing an answered file (or
dropping a new version under the same name) answers it again; the new results never overwrite those of
another version (``<stem>-<sha12>.parquet`` when ``<stem>.parquet`` belongs to another file or version).
Files the inbox ignores: hidden names, temporary names (``.tmp``/``.part``/``.partial``), and any suffix
other than the question formats (they are listed, never touched). Symlinks pointing outside the inbox, broken
or looping links and special files (FIFOs) are refused with the reason, never read.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from storage.atomic import TMP_MARK, sha256_file, write_bytes_atomic
from storage.safepath import path_problem

QUESTION_SUFFIXES = (".jsonl", ".csv", ".parquet")
TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")
LEDGER = "processed.jsonl"
FAILED = "failed"


@dataclass(frozen=True)
class InboxFile:
    """One question file to answer, and where its results go."""

    path: str
    name: str
    sha256: str
    out: str


@dataclass
class InboxScan:
    new: list[InboxFile] = field(default_factory=list)
    already_answered: list[str] = field(default_factory=list)  # names whose current content is in the ledger
    ignored: list[str] = field(default_factory=list)  # names that are not question files
    refused: list[str] = field(default_factory=list)  # "name: reason": links out of the inbox, special files


def read_ledger(results_dir: str | Path) -> list[dict[str, Any]]:
    """The ledger's entries, oldest first (an unreadable line is skipped, never fatal)."""
    path = Path(results_dir) / LEDGER
    if not path.exists():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "name" in obj and "sha256" in obj:
            entries.append(obj)
    return entries


def scan_inbox(inbox_dir: str | Path, results_dir: str | Path) -> InboxScan:
    """The inbox's question files not yet answered (by name + sha256), sorted by name."""
    inbox, results = Path(inbox_dir).expanduser().resolve(), Path(results_dir).expanduser().resolve()
    scan = InboxScan()
    if not inbox.is_dir():
        return scan
    ledger = read_ledger(results)
    done = {(e["name"], e["sha256"]) for e in ledger}
    taken = {e.get("out") for e in ledger}
    for p in sorted(inbox.iterdir()):
        if p.is_dir() and not p.is_symlink():
            continue  # failed/ and any other folder
        name = p.name
        if name.startswith(".") or name.startswith(TMP_MARK) or name.lower().endswith(TEMP_SUFFIXES):
            continue
        problem = path_problem(p, inbox)  # a link to a file outside the inbox is never read (storage/safepath.py)
        if problem:
            scan.refused.append(f"{name}: {problem}")
            continue
        if p.suffix.lower() not in QUESTION_SUFFIXES:
            scan.ignored.append(name)
            continue
        sha = sha256_file(p)
        if (name, sha) in done:
            scan.already_answered.append(name)
            continue
        out = results / f"{p.stem}.parquet"
        if str(out) in taken or any(o.out == str(out) for o in scan.new):
            out = results / f"{p.stem}-{sha[:12]}.parquet"
        scan.new.append(InboxFile(str(p), name, sha, str(out)))
    return scan


def record_answered(results_dir: str | Path, item: InboxFile, questions: int, **extra: Any) -> None:
    """Add ``item`` to the ledger (the whole ledger is rewritten atomically: it is small)."""
    results = Path(results_dir).expanduser().resolve()
    entries = [e for e in read_ledger(results) if (e["name"], e["sha256"]) != (item.name, item.sha256)]
    entries.append({**asdict(item), "questions": questions, "answered_at": datetime.now().isoformat(), **extra})
    data = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries).encode()
    write_bytes_atomic(results / LEDGER, data)


def move_failed(inbox_dir: str | Path, item: InboxFile, error: str) -> Path:
    """Move a failed file to ``INBOX/failed/`` with ``<name>.error.txt`` beside it; return its new path.

    An earlier failure of the same name is kept: the new one gets a timestamp in its name.
    """
    failed = Path(inbox_dir).expanduser().resolve() / FAILED
    failed.mkdir(parents=True, exist_ok=True)
    src = Path(item.path)
    dest = failed / item.name
    if dest.exists() or (failed / f"{item.name}.error.txt").exists():
        dest = failed / f"{src.stem}.{datetime.now():%Y%m%d-%H%M%S}-{time.time_ns() % 1000000:06d}{src.suffix}"
    note = f"{item.name} (sha256 {item.sha256}) failed at {datetime.now().isoformat()}\n\n{error.rstrip()}\n"
    write_bytes_atomic(failed / f"{dest.name}.error.txt", note.encode())
    if src.exists():
        shutil.move(str(src), str(dest))
    return dest
