"""Shared fixtures: real Prefect (test harness), real packaged models, real files in temp dirs.

Models are prepared once into ``$RAGBATCH_HOME`` (default ``./.ragbatch``, shared with the CLI so CI and
developers convert each model only once); Prefect's database and result storage live in a temp dir.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_PREFECT_TMP = tempfile.mkdtemp(prefix="ragbatch-prefect-")
os.environ.setdefault("RAGBATCH_HOME", str(ROOT / ".ragbatch"))
os.environ["PREFECT_HOME"] = _PREFECT_TMP
os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = os.path.join(_PREFECT_TMP, "results")
sys.path.insert(0, str(ROOT))

from storage.paths import configure_environment  # noqa: E402

configure_environment()

SMALLEST_GENERATOR = "smollm2-135m-instruct"  # 135M parameters: the fastest packaged generator, for tests


# Markers from what a test uses (pyproject.toml lists them): `pytest -m "not e2e"` is the quick loop.
_FIXTURE_MARKS = {"prefect_harness": "e2e", "api_env": "e2e", "s3": "s3"}
_STARTS_A_PROCESS = ("subprocess.", "CLI", "run_cli(", "sys.executable")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    import inspect

    for item in items:
        for fixture, mark in _FIXTURE_MARKS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(mark)
        fn = getattr(item, "function", None)
        try:
            source = inspect.getsource(fn) if fn is not None else ""
        except (OSError, TypeError):
            source = ""
        if any(s in source for s in _STARTS_A_PROCESS):
            item.add_marker("subprocess")


@pytest.fixture(autouse=True)
def _own_answer_cache(tmp_path_factory, monkeypatch):
    """Each test starts with an empty answer cache of its own: a test that generates must not be served by an
    earlier one (tests/test_answer_cache.py tests the sharing itself)."""
    monkeypatch.setenv("RAGBATCH_ANSWER_CACHE_DIR", str(tmp_path_factory.mktemp("answer-cache")))


@pytest.fixture(scope="session")
def s3():
    """moto's real S3 server on a loopback port for the session (tests/helpers.py ``loopback_s3``)."""
    pytest.importorskip("moto")
    from helpers import loopback_s3

    with loopback_s3() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def prefect_harness():
    """One real ephemeral Prefect server for the whole session (its 30 s default start-up is too tight)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def minilm():
    """The packaged all-MiniLM-L6-v2 configuration (resolved from its own sentence-transformers files)."""
    from tasks.indexing.embed import resolve_embedder

    return resolve_embedder("all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def minilm_model(minilm):
    from tasks.indexing.embed import load_embedder

    return load_embedder(minilm, "cpu")


@pytest.fixture(scope="session")
def demo_corpus() -> Path:
    from tasks.demo.corpus import build_demo_corpus

    return build_demo_corpus()


def write_corpus(root: Path, files: dict[str, str | bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8")
    return root


@pytest.fixture()
def api_env(prefect_harness) -> dict[str, str]:
    """Environment for subprocesses: the session's Prefect test server, no kill point."""
    import os

    from prefect.settings import PREFECT_API_URL

    from storage.testing import KILL_ENV

    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value(), PYTHONPATH=str(ROOT))
    env.pop(KILL_ENV, None)
    return env
