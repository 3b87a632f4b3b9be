"""The store on its own: commits, implicit tombstones, garbage collection, locking, embedder identity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from helpers import FP, write_test_shard
from storage.store import EmbedderMismatchError, StoreError, open_store
from storage.store.schema import ManifestRow
from tasks.retrieval.search import load_dense_index


def test_commit_tombstones_and_gc(tmp_path):
    st = open_store(tmp_path / "s")
    st.commit(FP, 4, [write_test_shard(st, {"a": ("h1", 2), "b": ("h1", 3)})])
    assert st.meta().live_rows == 5 and st.meta().documents == 2
    # b changes (new hash, new shard), a is removed: the first shard keeps only dead rows and is dropped.
    meta = st.commit(FP, 4, [write_test_shard(st, {"b": ("h2", 1)}, seed=1)], remove_doc_ids={"a"})
    assert (meta.live_rows, meta.documents, len(meta.shards), meta.generation) == (1, 1, 1, 2)
    files = sorted(p.name for p in (tmp_path / "s" / "shards").iterdir())
    assert len(files) == 2  # the dead shard's files were collected
    assert sorted(p.name for p in (tmp_path / "s").glob("manifest-*")) == ["manifest-000002.parquet"]
    idx = load_dense_index(st, "cpu")
    assert idx.chunks["chunk_id"].to_pylist() == ["b#0"]


def test_partly_dead_shard_serves_only_live_rows(tmp_path):
    st = open_store(tmp_path / "s")
    st.commit(FP, 4, [write_test_shard(st, {"a": ("h1", 2), "b": ("h1", 2)})])
    st.commit(FP, 4, [write_test_shard(st, {"a": ("h2", 1)}, seed=3)])
    idx = load_dense_index(st, "cpu")
    assert sorted(idx.chunks["chunk_id"].to_pylist()) == ["a#0", "b#0", "b#1"]
    assert idx.chunks.filter(pa.compute.equal(idx.chunks["doc_id"], "a"))["doc_sha256"].to_pylist() == ["h2"]
    assert st.meta().total_rows == 5 and st.meta().live_rows == 3


def test_uncommitted_shard_is_an_orphan_and_previous_generation_stays_readable(tmp_path):
    st = open_store(tmp_path / "s")
    st.commit(FP, 4, [write_test_shard(st, {"a": ("h1", 2)})])
    before = json.loads((tmp_path / "s" / "index.json").read_text())
    orphan = write_test_shard(st, {"z": ("h9", 4)})  # written, never committed: as if the writer was killed here
    (tmp_path / "s" / ".tmp-dead-manifest.parquet").write_bytes(b"partial")
    assert json.loads((tmp_path / "s" / "index.json").read_text()) == before
    assert load_dense_index(st, "cpu").rows == 2
    removed = {Path(p).name for p in st.collect_garbage()}
    assert f"{orphan.info.name}.safetensors" in removed
    assert not (tmp_path / "s" / ".tmp-dead-manifest.parquet").exists()


def test_embedder_mismatch_is_refused_with_both_names(tmp_path):
    st = open_store(tmp_path / "s")
    st.commit(FP, 4, [write_test_shard(st, {"a": ("h1", 1)})])
    other = {"id": "fp-b", "name": "model-b", "pooling": "cls", "dim": 4}
    with pytest.raises(EmbedderMismatchError, match=r"built with embedder 'model-test'.*queried with 'model-b'"):
        st.check_embedder(other)


def test_corrupt_shard_and_missing_store_give_clear_errors(tmp_path):
    st = open_store(tmp_path / "s")
    with pytest.raises(StoreError, match="no index at"):
        st.meta()
    st.commit(FP, 4, [write_test_shard(st, {"a": ("h1", 2)})])
    info = st.meta().shards[0]
    tpath, _ = st.shard_paths(info.name)
    data = bytearray(tpath.read_bytes())
    data[-1] ^= 0xFF
    tpath.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="checksum mismatch"):
        load_dense_index(st, "cpu", check_sha=True)


def test_second_writer_is_refused_and_stale_lock_is_taken_over(tmp_path):
    st = open_store(tmp_path / "s")
    with st.lock(), pytest.raises(StoreError, match=r"locked by pid \d+ on"):
        with open_store(tmp_path / "s").lock(wait_s=0.3):
            pass
    # A lock left by a process that is gone is taken over.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "s" / ".lock").write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename}))
    with st.lock():
        assert json.loads((tmp_path / "s" / ".lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / "s" / ".lock").exists()


def test_manifest_row_matches_its_schema():
    """ManifestRow and MANIFEST_SCHEMA are one record: same fields in the same order, and a row round-trips."""
    import dataclasses

    from storage.store.schema import MANIFEST_SCHEMA, manifest_table

    assert [f.name for f in dataclasses.fields(ManifestRow)] == MANIFEST_SCHEMA.names
    row = ManifestRow(doc_id="a", path="a.txt", sha256="h", size=3, mtime=1.5, n_chunks=2, shard="s",
                      embedder="fp", chunking="c", status="indexed", indexed_at=2.5)
    assert [ManifestRow.from_record(r) for r in manifest_table([row]).to_pylist()] == [row]


def test_result_row_matches_its_schema():
    """ResultRow and RESULT_SCHEMA are one record: same fields in the same order, and a row round-trips."""
    import dataclasses

    from storage.runs.results import RESULT_SCHEMA, ResultRow, results_table

    assert [f.name for f in dataclasses.fields(ResultRow)] == RESULT_SCHEMA.names
    cite = {"passage": 1, "chunk_id": "a#0", "doc_id": "a", "page_start": 2, "page_end": 3, "inferred": True,
            "supported": True}
    row = ResultRow(question_id="q", question="?", source="f.jsonl", gold_answers=["x"], chunk_ids=["a#0"],
                    doc_ids=["a"], scores=[0.5], dense_scores=[0.25], chunk_texts=["t"], page_starts=[2],
                    page_ends=[3], citations=[cite], no_rag_answer="n", rag_answer="r", rag_raw="r [1]",
                    answers_differ=True, generator="g", embedder="e", retriever="hybrid", k=1, retrieve_s=0.5,
                    generate_s=1.5)
    assert [ResultRow.from_record(r) for r in results_table([row]).to_pylist()] == [row]
