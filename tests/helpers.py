"""What the tests share (and benchmarks/objstore.py): hand-made shards, the loopback S3 server, the browser, the CLI.

Test modules import these from here, never from one another, so each test file can be read (and run) alone.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "ragbatch.cli"]  # the command line as a user runs it, in a fresh process

# An embedder fingerprint for stores written by hand (no model): 4-dimensional rows.
FP = {"id": "fp-test", "name": "model-test", "pooling": "mean", "dim": 4}

WORDS = (
    "amber basalt cedar delta ember fjord granite harbor indigo juniper kestrel lagoon meadow nebula orchid "
    "prairie quartz raven sierra tundra umber valley willow xenon yarrow zephyr anchor beacon canyon dune"
).split()

# Eight documents of 60-123 words each: several chunks each at small chunk sizes.
DOCS = {
    f"doc{i:02d}.txt": f"Document {i} is about subject {i}. " + " ".join(f"word{i}x{j}" for j in range(60 + 9 * i))
    for i in range(8)
}


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``ragbatch ARGS`` in a fresh process from the repository root, its output captured as text."""
    return subprocess.run([*CLI, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def invoke(*args: str, columns: int = 80) -> Any:
    """``ragbatch ARGS`` in this process (typer's runner), printing ``columns`` wide."""
    from typer.testing import CliRunner

    from ragbatch.cli import app

    return CliRunner().invoke(app, list(args), env={"COLUMNS": str(columns)})


# ---------------------------------------------------------------- stores written by hand
def write_test_shard(store: Any, docs: dict[str, tuple[str, int]], seed: int = 0, scale: float = 1.0,
                     dup: bool = False) -> Any:
    """Write one (uncommitted) shard with ``n`` chunks for each doc id -> (sha, n); random unit rows of ``FP``.

    ``scale`` multiplies the rows (a norm check's test), ``dup`` gives every chunk of a document the same id."""
    from storage.store.schema import ManifestRow

    g = torch.Generator().manual_seed(seed)
    rows, manifest = [], []
    for doc_id, (sha, n) in docs.items():
        for i in range(n):
            cid = f"{doc_id}#0" if dup else f"{doc_id}#{i}"
            rows.append({"chunk_id": cid, "doc_id": doc_id, "doc_sha256": sha, "chunk_index": 0 if dup else i,
                         "text": f"{doc_id} chunk {i}", "char_start": 0, "char_end": 1, "n_tokens": 1})
        manifest.append(ManifestRow(doc_id=doc_id, path=doc_id, sha256=sha, size=1, mtime=0.0, n_chunks=n, shard="",
                                    embedder=FP["id"], chunking="c", status="indexed", indexed_at=0.0))
    emb = torch.nn.functional.normalize(torch.randn(len(rows), 4, generator=g), dim=1) * scale
    return store.write_shard(emb, pa.Table.from_pylist(rows), manifest)


def live_rows(store: Any) -> dict[str, torch.Tensor]:
    """chunk id -> embedding of every live row (every shard's checksum checked)."""
    from tasks.retrieval.search import load_dense_index

    idx = load_dense_index(store, "cpu", check_sha=True)
    emb = torch.cat(idx.shards) if idx.shards else torch.empty(0, 4)
    return dict(zip(idx.chunks["chunk_id"].to_pylist(), emb, strict=True))


def store_content(location: Any) -> tuple[Any, dict, dict]:
    """(meta, doc id → manifest facts, chunk id → (doc id, text, embedding) over the live rows of every shard)."""
    from storage.store import open_store

    st = open_store(location)
    meta = st.meta()
    manifest = {r["doc_id"]: (r["sha256"], r["n_chunks"], r["embedder"], r["chunking"], r["status"])
                for r in st.manifest(meta).to_pylist()}
    shard_of = {r["doc_id"]: r["shard"] for r in st.manifest(meta).to_pylist()}
    chunks = {}
    for info in meta.shards:
        emb, table = st.read_shard(info, check_sha=True)  # every committed shard is there and intact
        for i, row in enumerate(table.to_pylist()):
            if shard_of.get(row["doc_id"]) == info.name:
                chunks[row["chunk_id"]] = (row["doc_id"], row["text"], emb[i])
    return meta, manifest, chunks


def committed_docs(location: Any) -> dict[str, tuple[str, float]]:
    """doc id -> (shard, indexed_at) of the committed generation ({} before the first)."""
    from storage.store import open_store

    st = open_store(location)
    if not st.exists():
        return {}
    return {r["doc_id"]: (r["shard"], r["indexed_at"]) for r in st.manifest().to_pylist()}


def doc_text(i: int, version: int = 0) -> str:
    r = random.Random(i * 1000 + version)
    words = " ".join(r.choice(WORDS) for _ in range(10))
    return f"Record {i} version {version}: {words}."


def make_corpus(root: Path, n: int) -> Path:
    """``n`` small text documents (``doc-0000.txt`` …) of random words, the same for the same ``n``."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"doc-{i:04d}.txt").write_text(doc_text(i), encoding="utf-8")
    return root


# ---------------------------------------------------------------- the loopback S3 server
class S3:
    """The loopback S3 endpoint: environment for subprocesses, and a fresh bucket per test."""

    def __init__(self, port: int):
        self.env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                    "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}

    def bucket(self) -> str:
        import boto3

        name = f"t-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=name)
        return name


@contextmanager
def loopback_s3() -> Iterator[S3]:
    """moto's real S3 server (``ThreadedMotoServer``) on a free 127.0.0.1 port; the AWS variables point every
    client at it while the block runs."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = S3(port)
    saved = {k: os.environ.get(k) for k in endpoint.env}
    os.environ.update(endpoint.env)
    try:
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---------------------------------------------------------------- the browser
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not installed at /usr/bin/chromium (scripts/test.sh installs it when run as root: "
           "apt-get install -y chromium)",
)


def launch_chromium(playwright: Any) -> Any:
    """Debian's headless chromium under Playwright, with nothing that calls out of the machine."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
