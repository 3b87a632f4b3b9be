"""The machine's kernel measurements: ``$RAGBATCH_HOME/search-kernels.json`` (or ``$RAGBATCH_KERNELS_FILE``).

One JSON object: a key naming the machine's numerics (CPU features, torch, threads, vector dimension) maps to
what was measured there (milliseconds per kernel, the choice, when). Written atomically; a file that cannot be
read or parsed is treated as empty, so the caller measures again and writes a good one over it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from storage.atomic import write_json_atomic
from storage.paths import home

FILE_ENV = "RAGBATCH_KERNELS_FILE"


def calibration_path() -> Path:
    """``$RAGBATCH_KERNELS_FILE``, else ``$RAGBATCH_HOME/search-kernels.json``."""
    env = os.environ.get(FILE_ENV)
    return Path(env).expanduser().resolve() if env else home() / "search-kernels.json"


def read_calibration(path: Path | None = None) -> dict[str, Any]:
    """Every machine's entry; ``{}`` for a missing, unreadable or malformed file."""
    try:
        data = json.loads((path or calibration_path()).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_calibration(key: str, entry: dict[str, Any], path: Path | None = None) -> None:
    """Add or replace one machine's entry, keeping the others."""
    path = path or calibration_path()
    data = read_calibration(path)
    data[key] = entry
    write_json_atomic(path, data)
