"""Issue 14: the store on object storage, against a real S3 API (moto's server on a loopback port).

Nothing of ragbatch is mocked: s3fs/botocore talk HTTP to ``moto.server.ThreadedMotoServer`` on 127.0.0.1,
which enforces ``If-None-Match`` / ``If-Match`` with 412 as S3 does. Store-level tests need no model; the flow
tests index with the packaged embedder, kill the real CLI at each commit point and run Dask workers that
upload their shards themselves.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time

import pytest
import torch

from conftest import ROOT
from helpers import CLI, DOCS, FP, committed_docs, live_rows, make_corpus, store_content, write_test_shard
from storage.store import open_store
from storage.store.meta import StoreError
from storage.testing import KILL_ENV

pytest.importorskip("moto")
@pytest.fixture()
def url(s3):
    return f"s3://{s3.bucket()}/store"


# ---------------------------------------------------------------- store level (no model)
def test_commits_are_conditional_and_objects_immutable(url):
    st = open_store(url)
    assert type(st).__name__ == "S3Store" and st.root == url and not st.exists()
    st.commit(FP, 4, [write_test_shard(st, {"a": ("h1", 2), "b": ("h1", 3)})])
    assert st.verify().problems == [] and st.meta().generation == 1

    # Two writers read generation 1 and both publish a generation 2 on it (the window between a commit's read
    # of index.json and its conditional PUT, held open): exactly one commits, the other is told why.
    one, two = open_store(url), open_store(url)
    old = one.meta()
    two.meta()
    w1, w2 = write_test_shard(one, {"c": ("h1", 1)}, seed=1), write_test_shard(two, {"d": ("h1", 1)}, seed=2)
    results: dict[str, object] = {}

    def publish(name, store, write):
        meta, table = _next_generation(store, old, write)
        try:
            store._publish(old, meta, table)
            results[name] = meta
        except StoreError as exc:
            results[name] = exc

    threads = [threading.Thread(target=publish, args=a) for a in (("one", one, w1), ("two", two, w2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [r for r in results.values() if isinstance(r, StoreError)]
    assert len(errors) == 1 and "another writer committed since this one read generation 1" in str(errors[0])
    final = open_store(url)
    assert final.meta().generation == 2 and final.verify().problems == []
    assert {r["doc_id"] for r in final.manifest().to_pylist()} in ({"a", "b", "c"}, {"a", "b", "d"})
    # Orphans: generation 1's manifest (retired) and the loser's manifest and shard pair (never live).
    assert len(final.verify().orphans) == 4

    # Immutable objects are never overwritten, even by a writer that reuses a name.
    rel = "shards/" + final.meta().shards[0].name + ".safetensors"
    with pytest.raises(StoreError, match="already exists; immutable objects are never overwritten"):
        final._put_once(rel, b"x")
    assert final.verify().problems == []


def _next_generation(store, old, write):
    """Generation 2 on ``old`` with one more shard, as commit() computes it."""
    import dataclasses

    import pyarrow as pa

    from storage.store import MANIFEST_SCHEMA

    rows = store.manifest(old).to_pylist() + [r.to_record() for r in write.manifest_rows]
    meta = dataclasses.replace(old, generation=old.generation + 1, manifest=store.manifest_name(old.generation + 1),
                               shards=old.shards + [write.info], live_rows=old.live_rows + write.info.rows,
                               total_rows=old.total_rows + write.info.rows, documents=len(rows))
    return meta, pa.Table.from_pylist(sorted(rows, key=lambda r: r["doc_id"]), schema=MANIFEST_SCHEMA)


def test_lease_excludes_a_second_writer_until_it_expires(url, monkeypatch):
    monkeypatch.setenv("RAGBATCH_S3_LEASE_TTL_S", "2")
    st = open_store(url)
    st.commit(FP, 4, [])
    holder = open_store(url).lock()
    with holder:
        raw = st.objects.get(".lease")[0].decode()
        assert '"holder": "pid' in raw and '"expires"' in raw and '"renewals"' in raw
        with pytest.raises(StoreError, match=rf"is locked by pid {os.getpid()} on .* expires in"):
            open_store(url).lock().__enter__()
        time.sleep(2.5)  # renewed in the background: still held after its TTL
        assert holder.state["renewals"] >= 1
        with pytest.raises(StoreError, match="is locked by pid"):
            open_store(url).lock().__enter__()
    # Released: the next writer gets it at once.
    with open_store(url).lock():
        pass

    # A holder that stops renewing (killed) is taken over only after expiry, and then cannot commit.
    dead = open_store(url).lock().__enter__()
    dead._stop.set()
    dead._thread.join()
    t0 = time.monotonic()
    with open_store(url).lock(wait_s=10) as taker:
        assert time.monotonic() - t0 > 1.0  # waited for the expiry
        assert taker.state["took_over_from"] == dead.state["holder"]
        with pytest.raises(StoreError, match="expired and is now held by pid"):
            dead.renew()
    assert open_store(url).verify().problems == []


def test_garbage_is_collected_only_after_the_grace_period(url, monkeypatch):
    st = open_store(url)
    st.commit(FP, 4, [write_test_shard(st, {"a": ("h1", 2)})])
    first = st.meta()
    st.commit(FP, 4, [write_test_shard(st, {"a": ("h2", 2)}, seed=3)])  # replaces a: its old shard is dropped
    assert len(st.verify().orphans) == 3  # old manifest and shard pair: kept for slow readers
    # A reader still on the first generation reads it whole.
    old_emb, _ = open_store(url).read_shard(first.shards[0], check_sha=True)
    assert old_emb.shape == (2, 4)
    monkeypatch.setenv("RAGBATCH_S3_GC_GRACE_S", "0")
    removed = open_store(url).collect_garbage()
    assert len(removed) == 3 and open_store(url).verify().orphans == [] and open_store(url).verify().problems == []


# ---------------------------------------------------------------- flows (packaged embedder)
def _content(store):

    return live_rows(open_store(store))


def _untied(res):
    """The hits ranked above the last score (tantivy orders documents tied at the cut-off by segment layout)."""
    return [c for c, sc in zip(res.chunk_ids, res.scores, strict=True) if sc > res.scores[-1] + 1e-6]


def test_index_search_verify_on_s3_equal_a_local_store(prefect_harness, url, tmp_path):
    from typer.testing import CliRunner

    from flows.index import run_index
    from ragbatch.cli import app
    from tasks.retrieval.search import search

    docs = make_corpus(tmp_path / "docs", 30)
    remote = run_index(docs, url, batch_docs=8)
    local = run_index(docs, tmp_path / "local", batch_docs=8)
    assert (remote.added, remote.live_chunks, remote.shards) == (30, local.live_chunks, local.shards)
    got, want = _content(url), _content(tmp_path / "local")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    want_hits = {}
    for retriever in ("dense", "bm25", "hybrid"):
        (r,), _ = search(url, ["Record 7 version 0"], k=5, retriever=retriever)
        (loc,), _ = search(str(tmp_path / "local"), ["Record 7 version 0"], k=5, retriever=retriever)
        assert r.scores == pytest.approx(loc.scores, abs=1e-5), retriever
        assert _untied(r) == _untied(loc), retriever
        want_hits[retriever] = loc
    out = CliRunner().invoke(app, ["verify", "--store", url])
    assert out.exit_code == 0 and f"OK {url}: generation" in out.output and "in step" in out.output, out.output
    # A machine with an empty BM25 cache syncs it from the store's chunk tables at the committed generation.
    cache = open_store(url).bm25_root()
    shutil.rmtree(cache)
    from tasks.retrieval.search import clear_index_cache

    clear_index_cache()  # a fresh process on another machine
    (r,), _ = search(url, ["Record 7 version 0"], k=5, retriever="bm25")
    assert r.scores == pytest.approx(want_hits["bm25"].scores, abs=1e-5) and _untied(r) == _untied(want_hits["bm25"])
    from storage.store.bm25 import DiskBM25

    assert DiskBM25(cache).state() == (open_store(url).meta().generation, remote.live_chunks)
    again = run_index(docs, url, batch_docs=8)
    assert (again.unchanged, again.chunks_embedded) == (30, 0)


def test_killed_runs_on_s3_resume_and_a_second_writer_is_refused(prefect_harness, s3, api_env, url, tmp_path):

    from flows.index import run_index

    n, batch = 40, 4
    docs = make_corpus(tmp_path / "docs", n)
    env = dict(api_env, **s3.env, RAGBATCH_S3_LEASE_TTL_S="3")
    cmd = [*CLI, "index", str(docs), "--store", url, "--batch-docs", str(batch),
           "--wait", "30"]
    committed: dict = {}
    steps = [("after-shard:3", 8), ("mid-shard:2", 12), ("after-manifest:2", 16), ("before-index-json:3", 24),
             ("after-index-json:2", 32)]
    for point, expect in steps:
        proc = subprocess.run(cmd, env=dict(env, **{KILL_ENV: point}), cwd=ROOT, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == -signal.SIGKILL, f"{point}: {proc.stdout[-2000:]} {proc.stderr[-2000:]}"
        now = committed_docs(url)
        assert len(now) == expect, point
        assert all(now[d] == committed[d] for d in committed), point  # nothing committed before was redone
        committed = now
        assert open_store(url).verify().problems == [], point
        assert open_store(url).objects.head(".lease") is not None  # the dead writer's lease, taken over once expired

    # A live writer (stalled by the test hook, renewing its lease) refuses a second one, naming it.
    proc = subprocess.Popen(cmd[:-2] + ["--batch-docs", "1"], env=dict(env, **{KILL_ENV: "after-index-json:1:stall"}),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        gen = open_store(url).meta().generation
        deadline = time.monotonic() + 120
        while open_store(url).meta().generation < gen + 1:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(4)  # past the TTL: the lease is held because it is renewed, not because it is young
        with pytest.raises(StoreError, match=rf"is locked by pid {proc.pid} on"):
            run_index(docs, url, batch_docs=batch)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert open_store(url).verify().problems == []
    committed = committed_docs(url)

    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    final = committed_docs(url)
    assert len(final) == n and all(final[d] == committed[d] for d in committed)
    assert open_store(url).verify().problems == [] and open_store(url).objects.head(".lease") is None
    clean = tmp_path / "clean"
    run_index(docs, clean)
    got, want = _content(url), _content(clean)  # a resumed run's embeddings are a clean run's, bit for bit
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), \
        max(float((got[k] - want[k]).abs().max()) for k in want)


@pytest.mark.dask
def test_dask_workers_write_shards_straight_to_s3(prefect_harness, url, tmp_path):
    pytest.importorskip("prefect_dask")

    from conftest import write_corpus
    from flows.index import run_index

    corpus = write_corpus(tmp_path / "docs", DOCS)
    threads = run_index(corpus, tmp_path / "threads", batch_docs=2)
    dask = run_index(corpus, url, batch_docs=2, runner="dask", dask_workers=2)
    assert (dask.added, dask.chunks_embedded, dask.shards) == (8, threads.chunks_embedded, 4)
    m1, man1, ch1 = store_content(tmp_path / "threads")
    m2, man2, ch2 = store_content(url)
    assert man1 == man2 and sorted(ch1) == sorted(ch2) and len(ch1) == m1.live_rows == m2.live_rows
    assert all(torch.equal(ch1[c][2], ch2[c][2]) for c in ch1)
    assert open_store(url).verify().problems == []
