"""Crash-safe file writes: write a temporary sibling, fsync, rename over the target."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp-"


def tmp_sibling(path: Path) -> Path:
    """A temporary name in the same directory (so the final rename is atomic)."""
    return path.with_name(f"{TMP_MARK}{uuid.uuid4().hex[:8]}-{path.name}")


@contextlib.contextmanager
def atomic_path(path: Path, before_replace: Callable[[], None] | None = None) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it is fsynced and renamed to ``path``.

    ``before_replace`` runs between the fsync and the rename (the store's crash-test hook uses it). A full
    disk is reported as ``OSError(ENOSPC)`` naming ``path`` (the writers' own errors name neither it nor the
    store; safetensors' is not even an ``OSError``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(path)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except Exception as exc:
        if getattr(exc, "errno", None) == errno.ENOSPC or "No space left on device" in str(exc):
            raise OSError(errno.ENOSPC, f"No space left on device while writing {path}; nothing of it was kept"
                          ) from exc
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(path: Path, data: bytes, before_replace: Callable[[], None] | None = None) -> None:
    with atomic_path(path, before_replace) as tmp:
        tmp.write_bytes(data)


def write_bytes_if_changed(path: Path, data: bytes) -> bool:
    """:func:`write_bytes_atomic` unless ``path`` already holds exactly ``data``; True if it wrote."""
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    write_bytes_atomic(path, data)
    return True


def write_json_atomic(path: Path, obj: Any, before_replace: Callable[[], None] | None = None) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(), before_replace)


def sha256_file(path: Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(bufsize):
            h.update(block)
    return h.hexdigest()


def remove_orphan_tmp(directory: Path) -> int:
    """Delete temporary files left by a killed writer; returns how many were removed."""
    n = 0
    if directory.exists():
        for p in directory.rglob(f"{TMP_MARK}*"):
            if p.is_file():
                p.unlink(missing_ok=True)
                n += 1
    return n


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
