"""Issue 4: incremental, crash-safe re-indexing — verify, compaction, lock details, kill-and-resume.

Kills use the store's test hook ``RAGBATCH_TEST_KILL_AT=POINT:N`` (see storage/store/base.py) in a subprocess
running the real index flow through ``python -m ragbatch.cli index``. The subprocesses talk to the session's
Prefect test server (``PREFECT_API_URL`` of the harness) instead of starting their own ephemeral server
(~25 s each), so every kill costs only the start-up of Python, torch and the embedder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from helpers import CLI, FP, committed_docs, doc_text, live_rows, make_corpus, write_test_shard
from storage.store import EMPTY_LOCK_STALE_S, StoreError, open_store
from storage.store.bm25 import DiskBM25
from storage.testing import KILL_ENV
from tasks.retrieval.backends.bm25 import build_bm25
from tasks.retrieval.search import load_dense_index, search


# ---------------------------------------------------------------- helpers
def _lock_pid(store: Path) -> int | None:
    try:
        return json.loads((store / ".lock").read_text()).get("pid")
    except (OSError, ValueError):
        return None


def _index_cmd(docs: Path, store: Path, batch_docs: int) -> list[str]:
    return [*CLI, "index", str(docs), "--store", str(store),
            "--batch-docs", str(batch_docs)]


# ---------------------------------------------------------------- verify (store level, no model)
def test_verify_names_each_problem(tmp_path):
    st = open_store(tmp_path / "s")
    st.commit(FP, 4, [write_test_shard(st, {"a": ("h1", 2), "b": ("h1", 3)})])
    assert st.verify().problems == []
    rep = st.verify()
    assert (rep.documents, rep.live_rows, rep.total_rows, rep.shards) == (2, 5, 5, 1)

    # Rows that are not unit vectors: the safetensors file, the row and its norm are named.
    st.commit(FP, 4, [write_test_shard(st, {"c": ("h1", 2)}, scale=1.01)])
    (problem,) = st.verify().problems
    c_shard = st.manifest().to_pylist()[2]["shard"]
    assert f"{c_shard}.safetensors: 2 live rows do not have unit norm" in problem and "norm 1.01" in problem
    st.commit(FP, 4, [], remove_doc_ids={"c"})
    assert st.verify().problems == []

    # A chunk id live twice (and chunk indices not 0..n-1).
    st.commit(FP, 4, [write_test_shard(st, {"d": ("h1", 2)}, dup=True)])
    problems = st.verify().problems
    assert any("chunk id 'd#0' is live 2 times" in p for p in problems)
    assert any("document 'd': live chunk indices [0, 0] are not 0..1" in p for p in problems)
    st.commit(FP, 4, [], remove_doc_ids={"d"})

    # A manifest whose n_chunks disagrees with the rows: the manifest, document and shard are named.
    w = write_test_shard(st, {"e": ("h1", 2)})
    w.manifest_rows[0] = dataclasses.replace(w.manifest_rows[0], n_chunks=3)
    meta = st.commit(FP, 4, [w])
    problems = st.verify().problems
    assert any(f"{meta.manifest}: document 'e' has n_chunks 3 but 2 live rows in shard {w.info.name}" in p
               for p in problems)
    assert any("index.json: live_rows 8, but 7 rows are live" in p for p in problems)
    st.commit(FP, 4, [], remove_doc_ids={"e"})
    assert st.verify().problems == []

    # Missing shard file and an unreadable manifest.
    info = st.meta().shards[0]
    tpath, cpath = st.shard_paths(info.name)
    tpath.rename(tmp_path / "saved")
    assert st.verify().problems == [f"{tpath}: missing (listed in index.json)"]
    (tmp_path / "saved").rename(tpath)
    mpath = st.root / st.meta().manifest
    saved = mpath.read_bytes()
    mpath.write_bytes(saved[:-20])
    assert any(p.startswith(f"{mpath}: unreadable manifest") for p in st.verify().problems)
    mpath.write_bytes(saved)
    assert st.verify().problems == []
    (st.root / "index.json").write_text("{not json")
    assert st.verify().problems[0].startswith(f"{st.root / 'index.json'}: unreadable index metadata")


# ---------------------------------------------------------------- compaction (store level)
def test_compaction_copies_live_rows_exactly_and_respects_the_threshold(tmp_path):
    st = open_store(tmp_path / "s")
    st.commit(FP, 4, [write_test_shard(st, {"a": ("h1", 2), "b": ("h1", 2)}, seed=1)])  # A: will be 50% dead
    b_docs = {"c": ("h1", 3), "f": ("h1", 3), "g": ("h1", 3), "d": ("h1", 1)}
    st.commit(FP, 4, [write_test_shard(st, b_docs, seed=2)])  # B
    st.commit(FP, 4, [write_test_shard(st, {"e": ("h1", 3)}, seed=3)])  # C: stays clean
    a, b, c = (s.name for s in st.meta().shards)
    st.commit(FP, 4, [write_test_shard(st, {"a": ("h2", 1), "d": ("h2", 1)}, seed=4)])  # A 2/4 dead, B 1/10 dead
    assert st.meta().dead_ratio == pytest.approx(3 / 19)
    before = live_rows(st)
    gen = st.meta().generation
    rep = st.compact(0.6)  # nothing is that dead: no-op, same generation
    assert (rep.compacted, rep.written, st.meta().generation) == ([], [], gen)

    rep = st.compact(0.3)
    assert rep.compacted == [a] and len(rep.written) == 1 and rep.dead_rows_dropped == 2 and rep.rows_copied == 2
    after = live_rows(st)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)  # copied bitwise
    names = [s.name for s in st.meta().shards]
    assert a not in names and b in names and c in names
    assert not st.shard_paths(a)[0].exists() and not st.shard_paths(a)[1].exists()  # old files collected
    assert {r["doc_id"]: r["shard"] for r in st.manifest().to_pylist()}["b"] == rep.written[0]  # re-pointed
    assert st.verify().problems == [] and st.meta().dead_ratio == pytest.approx(1 / 17)

    # Everything with a dead row, packed into shards of at most 4 rows without splitting a document.
    rep = st.compact(0.0, shard_rows=4)
    assert rep.compacted == [b] and len(rep.written) == 3 and (rep.dead_rows_dropped, rep.rows_copied) == (1, 9)
    rep = st.verify()
    assert rep.problems == [] and st.meta().total_rows == st.meta().live_rows == 16 and rep.orphans == []
    after = live_rows(st)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert st.compact().compacted == []


def test_compaction_killed_at_any_point_keeps_the_store_valid(tmp_path):
    st = open_store(tmp_path / "s")
    st.commit(FP, 4, [write_test_shard(st, {"a": ("h1", 2), "b": ("h1", 2)})])
    st.commit(FP, 4, [write_test_shard(st, {"a": ("h2", 1)}, seed=1)])
    before, gen = live_rows(st), st.meta().generation
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for point in ("after-shard:1", "after-manifest:1", "before-index-json:1"):
        env[KILL_ENV] = point
        proc = subprocess.run([*CLI, "compact", "--store", str(st.root)],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        rep = st.verify()
        assert rep.problems == [] and st.meta().generation == gen and rep.orphans  # old generation intact
    env.pop(KILL_ENV)
    proc = subprocess.run([*CLI, "compact", "--store", str(st.root)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "compacted 1 shards into 1: 2 dead rows dropped" in proc.stdout, proc.stdout
    after = live_rows(st)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert st.verify().problems == [] and st.verify().orphans == []


# ---------------------------------------------------------------- lock details
def test_empty_or_corrupt_lock_is_stale_only_after_its_age(tmp_path):
    st = open_store(tmp_path / "s")
    lock = st.root / ".lock"
    st.root.mkdir(parents=True)
    for content in (b"", b'{"pi'):  # killed between create and write / during the write
        lock.write_bytes(content)
        with pytest.raises(StoreError, match=r"locked by an unknown process \(the lock file is empty or unreadable"):
            with st.lock():
                pass
        old = time.time() - EMPTY_LOCK_STALE_S - 5
        os.utime(lock, (old, old))
        with st.lock():
            assert json.loads(lock.read_text())["pid"] == os.getpid()
        assert not lock.exists()


def test_stale_lock_is_taken_over_by_exactly_one_writer(tmp_path):
    st = open_store(tmp_path / "s")
    st.root.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (st.root / ".lock").write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename}))
    barrier, won, refused = threading.Barrier(8), [], []

    def writer() -> None:
        barrier.wait()
        try:
            with open_store(st.root).lock():
                won.append(1)
                deadline = time.monotonic() + 30
                while len(won) + len(refused) < 8 and time.monotonic() < deadline:  # hold until all have tried
                    time.sleep(0.01)
        except StoreError:
            refused.append(1)

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(won), len(refused)) == (1, 7)


# ---------------------------------------------------------------- through the flow
def test_tombstoned_chunks_never_return_before_or_after_compaction(prefect_harness, tmp_path):
    from typer.testing import CliRunner

    from flows.index import run_index
    from ragbatch.cli import app

    docs = make_corpus(tmp_path / "docs", 12)
    store = tmp_path / "store"
    run_index(docs, store, batch_docs=4, compact_dead_ratio=1.0)
    for i in (1, 5, 9):
        (docs / f"doc-{i:04d}.txt").write_text(doc_text(i, version=1))
    for i in (2, 6, 10):
        (docs / f"doc-{i:04d}.txt").unlink()
    r = run_index(docs, store, batch_docs=4, compact_dead_ratio=1.0)
    assert (r.changed, r.removed, r.compacted_shards) == (3, 3, 0) and r.dead_ratio == pytest.approx(6 / 15)
    removed = {f"doc-{i:04d}.txt" for i in (2, 6, 10)}
    queries = [doc_text(i) for i in (1, 2, 5, 6)]  # the old texts of changed and removed documents

    def results() -> dict[str, dict[str, float]]:
        out = {}
        for retriever in ("dense", "bm25", "hybrid"):
            for res in search(str(store), queries, k=100, retriever=retriever)[0]:
                assert not removed & set(res.doc_ids) and len(set(res.chunk_ids)) == len(res.chunk_ids) == 9
                for doc, text in zip(res.doc_ids, res.texts, strict=True):
                    n = int(doc[4:8])
                    assert text == doc_text(n, version=1 if n in (1, 5, 9) else 0)  # never an old version
                out[f"{retriever}:{res.query}"] = dict(zip(res.chunk_ids, res.scores, strict=True))
        return out

    before = results()
    shards_before = open_store(store).meta().shards
    out = CliRunner().invoke(app, ["compact", "--store", str(store)])
    assert out.exit_code == 0 and "6 dead rows dropped" in out.output, out.output
    meta = open_store(store).meta()
    assert meta.total_rows == meta.live_rows == 9 and len(meta.shards) < len(shards_before)
    after = results()
    assert after.keys() == before.keys()
    for key in before:
        assert after[key].keys() == before[key].keys()
        if key.startswith("dense:"):  # BM25 statistics counted the tombstoned chunks until compaction rebuilt it
            assert all(abs(after[key][c] - before[key][c]) < 1e-5 for c in before[key])
    # After compaction the on-disk BM25 index holds exactly the live chunks: scores equal a fresh build's.
    idx = load_dense_index(open_store(store), "cpu")
    fresh = build_bm25(idx.chunks)
    assert idx.bm25.source == "disk"
    got, want = idx.bm25.search(queries, 9), fresh.search(queries, 9)
    assert torch.equal(got[0], want[0]) and torch.allclose(got[1], want[1], atol=1e-5)
    out = CliRunner().invoke(app, ["verify", "--store", str(store)])
    assert out.exit_code == 0 and out.output.startswith("OK ") and "9 live rows of 9" in out.output

    # Automatic compaction at the end of a run once more than compact_dead_ratio of the rows are dead.
    for i in (0, 3, 4, 7):
        (docs / f"doc-{i:04d}.txt").write_text(doc_text(i, version=2))
    r = run_index(docs, store, batch_docs=4)  # 4 of 13 rows dead > 0.3
    assert r.changed == 4 and r.compacted_shards >= 1 and r.dead_rows_dropped == 4 and r.dead_ratio == 0.0
    assert open_store(store).verify().problems == []
    (res,), _ = search(str(store), [doc_text(3)], k=100, retriever="bm25")
    assert doc_text(3) not in res.texts and len(res.doc_ids) == 9


def test_corrupt_files_are_named_by_verify_and_refused_by_search(prefect_harness, tmp_path):
    from typer.testing import CliRunner

    from flows.index import run_index
    from ragbatch.cli import app

    good = tmp_path / "good"
    run_index(make_corpus(tmp_path / "docs", 6), good, batch_docs=3)
    assert open_store(good).verify().problems == []
    for what in ("flip", "truncate"):
        store = tmp_path / what
        shutil.copytree(good, store)
        st = open_store(store)
        info = st.meta().shards[-1]
        tpath, cpath = st.shard_paths(info.name)
        if what == "flip":
            target = tpath
            data = bytearray(tpath.read_bytes())
            data[len(data) // 2] ^= 0x01  # one bit of one float
            tpath.write_bytes(bytes(data))
        else:
            target = cpath
            cpath.write_bytes(cpath.read_bytes()[: cpath.stat().st_size // 2])
        problems = st.verify().problems
        assert problems and all(str(target) in p for p in problems), problems
        assert any(f"{target}: sha256 mismatch" in p for p in problems)
        if what == "truncate":
            assert any(f"{target}: unreadable Parquet" in p for p in problems)
        out = CliRunner().invoke(app, ["verify", "--store", str(store)])
        assert out.exit_code == 1 and str(target.name) in out.output
        with pytest.raises(StoreError, match=rf"{target.name}: checksum mismatch"):
            search(str(store), ["Record 1"], k=3, retriever="dense")


def test_killed_runs_resume_to_a_clean_full_index(prefect_harness, api_env, tmp_path):
    """Kill the index flow at every commit stage, from outside, and while a second run is refused; then resume."""
    from flows.index import run_index

    n, batch = 120, 4
    docs = make_corpus(tmp_path / "docs", n)
    store = tmp_path / "store"
    committed: dict[str, tuple[str, float]] = {}
    # (kill point, documents committed after the run): a fresh store's first commit is an empty one.
    steps = [("after-shard:3", 8), ("mid-shard:2", 12), ("after-manifest:2", 16), ("before-index-json:3", 24),
             ("after-index-json:2", 32)]
    for point, expect in steps:
        proc = subprocess.run(_index_cmd(docs, store, batch), env=dict(api_env, **{KILL_ENV: point}), cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == -signal.SIGKILL, f"{point}: {proc.stdout[-2000:]} {proc.stderr[-2000:]}"
        now = committed_docs(store)
        assert len(now) == expect, point
        assert all(now[d] == committed[d] for d in committed), point  # nothing committed before was redone
        committed = now
        assert open_store(store).verify().problems == [], point
        assert (store / ".lock").exists()  # left behind by the dead writer; the next run takes it over
    assert open_store(store).verify().orphans  # the last kill came before garbage collection

    # A writer killed from outside while a second run on the same store is refused. The writer stalls (test
    # hook) holding its lock after its second commit, so the second run meets a live writer on any machine
    # speed; racing a running writer failed on a fast CI machine that finished all 88 commits first.
    proc = subprocess.Popen(_index_cmd(docs, store, 1), env=dict(api_env, **{KILL_ENV: "after-index-json:2:stall"}),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        gen = open_store(store).meta().generation
        deadline = time.monotonic() + 120
        while open_store(store).meta().generation < gen + 2:  # it holds the lock and has committed two batches
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(StoreError, match=rf"is locked by pid {proc.pid} on"):
            run_index(docs, store, batch_docs=batch)
        assert proc.poll() is None  # still alive when it is killed
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    now = committed_docs(store)
    assert len(committed) < len(now) < n and all(now[d] == committed[d] for d in committed)
    assert open_store(store).verify().problems == []
    committed = now

    # A run to the end, and a second one that waits for its lock (lock_wait_s) instead of failing.
    script = ("import json, sys; from flows.index import run_index; "
              "r = run_index(sys.argv[1], sys.argv[2], batch_docs=int(sys.argv[3])); print(json.dumps(r.to_dict()))")
    proc = subprocess.Popen([sys.executable, "-c", script, str(docs), str(store), str(batch)], env=api_env,
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 120
    while _lock_pid(store) != proc.pid and proc.poll() is None:  # it holds the lock (or has already finished)
        assert time.monotonic() < deadline
        time.sleep(0.05)
    waited = run_index(docs, store, batch_docs=batch, lock_wait_s=300)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0
    report = json.loads(out.strip().splitlines()[-1])
    assert sorted(report["embedded_doc_ids"]) == sorted(set(committed_docs(store)) - set(committed))  # only the rest
    assert report["added"] == n - len(committed) and report["unchanged"] == len(committed)
    assert (waited.unchanged, waited.chunks_embedded) == (n, 0)
    final = open_store(store)
    assert final.verify().problems == [] and final.verify().orphans == [] and not (store / ".lock").exists()
    assert DiskBM25(store).state() == (final.meta().generation, n)  # BM25 followed every kill and resume

    # Equal to a clean full index of the same corpus: same chunk ids, the same embeddings bit for bit (a chunk's
    # embedding does not depend on the batch it was embedded in: tasks/invariant.py).
    clean = tmp_path / "clean"
    run_index(docs, clean)
    got, want = live_rows(final), live_rows(open_store(clean))
    assert got.keys() == want.keys() and len(got) == final.meta().live_rows == n
    assert all(torch.equal(got[k], want[k]) for k in want), max(float((got[k] - want[k]).abs().max()) for k in want)
