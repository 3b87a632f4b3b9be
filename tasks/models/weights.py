"""What identifies a model's weights: one sha256 over its weight files, computed once per process and file state.

The embedder's fingerprint (an index refuses queries from another embedder) and the generator's (an answer's
cache key) both hash the weights themselves, not a name: two folders holding the same weights are one model, and
a folder whose weights changed is another.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tasks.cache import ProcessCache

_HASHES: ProcessCache[str] = ProcessCache()


class WeightsError(ValueError):
    """A model folder without weight files."""


def weights_sha256(folder: Path) -> str:
    """sha256 over the folder's ``*.safetensors`` (else ``pytorch_model*.bin``) files, in name order."""
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise WeightsError(f"{folder}: no model weights (*.safetensors) found")
    # Hashing per call (one per answer batch) cost seconds; the stat key still sees a changed file.
    key = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _HASHES.get(key, lambda: _sha256_files(files))


def _sha256_files(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()
