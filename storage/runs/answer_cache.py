"""The answer cache: generated answers stored by the hash of everything that decides them.

An answer's key (tasks/generation/keys.py) hashes the exact prompt token ids, the generator's weights, the
settings that change its output and the numerics it ran on (device, CPU kernels, torch, thread count, packed
weights or not: answers are exact per CPU kind and thread count, not across them). The same key means the same
answer, byte for byte, so ``answer``, ``eval`` and every re-run reuse it instead of generating again: a run's
no-RAG arm is generated once per question and generator, and its RAG arm again only when the passages it reads
change.

One small JSON file per answer under ``$RAGBATCH_HOME/answer-cache/<2 hex>/<key>.json`` (or
``$RAGBATCH_ANSWER_CACHE_DIR``), holding its key and the
answer's sha256 beside the answer:

- crash-safe: each entry is written to a temporary file, fsynced and renamed, so a killed run leaves whole
  entries or none;
- never served corrupt: an entry whose key or hash does not match is deleted and counted as a miss (the answer
  is generated again);
- bounded: a hit touches its file; :meth:`AnswerCache.prune` deletes the least recently used entries beyond
  ``max_entries`` (``RAGBATCH_ANSWER_CACHE_ENTRIES``, default 200,000 ≈ 100 MB), and runs after every answer run.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from storage.atomic import TMP_MARK, write_bytes_atomic
from storage.paths import home

ENTRIES_ENV = "RAGBATCH_ANSWER_CACHE_ENTRIES"
DIR_ENV = "RAGBATCH_ANSWER_CACHE_DIR"
DEFAULT_ENTRIES = 200_000


def default_cache_dir() -> Path:
    """``$RAGBATCH_ANSWER_CACHE_DIR``, else ``$RAGBATCH_HOME/answer-cache``."""
    return Path(os.environ[DIR_ENV]).expanduser().resolve() if os.environ.get(DIR_ENV) else home() / "answer-cache"


@dataclass
class AnswerCache:
    root: Path = field(default_factory=default_cache_dir)
    max_entries: int = field(default_factory=lambda: int(os.environ.get(ENTRIES_ENV, DEFAULT_ENTRIES)))
    hits: int = 0
    misses: int = 0
    dropped: int = 0  # corrupt entries found and deleted

    def path(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not an answer key: {key!r}")
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        """The answer stored under ``key``, or None (absent, or corrupt: then deleted)."""
        path = self.path(key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            self.misses += 1
            return None
        try:
            entry = json.loads(raw)
            answer = entry["answer"]
            ok = (entry["key"] == key and isinstance(answer, str)
                  and entry["sha256"] == hashlib.sha256(answer.encode()).hexdigest())
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            ok = False
        if not ok:
            path.unlink(missing_ok=True)
            self.dropped += 1
            self.misses += 1
            return None
        try:
            os.utime(path)  # least recently used goes first when pruning
        except OSError:
            pass
        self.hits += 1
        return answer

    def put(self, key: str, answer: str) -> None:
        body = {"key": key, "sha256": hashlib.sha256(answer.encode()).hexdigest(), "answer": answer}
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, json.dumps(body, ensure_ascii=False).encode())

    def entries(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [p for p in self.root.glob("??/*.json") if not p.name.startswith(TMP_MARK)]

    def prune(self, max_entries: int | None = None) -> int:
        """Delete the least recently used entries beyond ``max_entries``; return how many went."""
        limit = self.max_entries if max_entries is None else max_entries
        entries = self.entries()
        if len(entries) <= limit:
            return 0
        dated = []
        for p in entries:
            try:
                dated.append((p.stat().st_mtime_ns, p))
            except FileNotFoundError:
                continue
        dated.sort()
        gone = dated[: max(0, len(dated) - limit)]
        for _, p in gone:
            p.unlink(missing_ok=True)
        return len(gone)
