"""Issue 22, finding 1: no output path can destroy a store or an input (real CLI, real flows, real store).

Each case lost data with exit 0 before: ``--out STORE/index.json``, an out equal to the store's manifest or to the
questions file, a table under ``STORE/shards/`` (deleted by the next index run's garbage collection).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import SMALLEST_GENERATOR, write_corpus
from helpers import CLI, invoke
from storage.outputs import OutputPathError, check_outputs, store_root
from storage.store import open_store


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def indexed(prefect_harness, tmp_path_factory) -> tuple[Path, Path]:
    """A real store of two documents, and a Parquet question file beside it."""
    import polars as pl

    from flows.index import run_index

    root = tmp_path_factory.mktemp("outputs")
    docs = write_corpus(root / "docs", {"a.txt": "The Seine flows through Paris.", "b.txt": "K2 is a mountain."})
    store = root / "store"
    run_index(docs, store)
    questions = root / "q.parquet"
    pl.DataFrame({"id": ["q1"], "question": ["Which river flows through Paris?"]}).write_parquet(questions)
    return store, questions


def test_answer_refuses_outputs_inside_a_store_or_over_an_input(indexed, tmp_path):
    store, questions = indexed
    before, q_before = _snapshot(store), questions.read_bytes()
    manifest = next(store.glob("manifest-*.parquet"))
    link = tmp_path / "looks-elsewhere"
    link.symlink_to(store, target_is_directory=True)
    for out, msg in [(store / "index.json", "inside the store"),
                     (manifest, "inside the store"),
                     (store / "shards" / "results.parquet", "inside the store"),
                     (link / "results.parquet", "inside the store"),  # a symlink does not hide it
                     (questions, "would overwrite the run's input")]:
        res = invoke("answer", str(questions), "--store", str(store), "--out", str(out))
        assert res.exit_code == 2 and msg in " ".join(res.output.split()), (out, res.output)
    assert _snapshot(store) == before and questions.read_bytes() == q_before
    assert open_store(store).verify().problems == []

    # A run config naming such an out is refused the same way (the same check, before any work).
    cfg = tmp_path / "run.config.json"
    cfg.write_text(json.dumps({"questions": [str(questions)], "store": str(store), "out": str(manifest),
                               "retrieval": {}, "generation": {}}))
    res = invoke("answer", "--config", str(cfg))
    assert res.exit_code == 2 and "inside the store" in " ".join(res.output.split()), res.output
    assert _snapshot(store) == before


def test_the_flows_refuse_them_too(indexed, tmp_path):
    """serve and the inbox call the flows, not the CLI: the flow's own check is the one that counts."""
    from flows.answer import run_answer
    from flows.evaluate import run_eval
    from flows.inbox import run_inbox

    store, questions = indexed
    before = _snapshot(store)
    with pytest.raises(OutputPathError, match="inside the store"):
        run_answer(questions, store, store / "shards" / "x.parquet", generator=SMALLEST_GENERATOR)
    with pytest.raises(OutputPathError, match="would overwrite the run's input"):
        run_answer(questions, store, questions, generator=SMALLEST_GENERATOR)
    with pytest.raises(OutputPathError, match="inside the store"):
        run_eval(str(questions), store, store / "report", corpus=str(tmp_path))
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    with pytest.raises(OutputPathError, match="inside the store"):
        run_inbox(inbox, store / "results", store, generator=SMALLEST_GENERATOR)
    with pytest.raises(OutputPathError, match="inside the run's input folder"):
        run_inbox(inbox, inbox / "results", store, generator=SMALLEST_GENERATOR)
    assert _snapshot(store) == before


def test_what_counts_as_a_store(tmp_path):
    web = tmp_path / "site"
    web.mkdir()
    (web / "index.json").write_text("{}")  # a common name: not a store without shards or a manifest
    assert store_root(web / "out.parquet") is None
    check_outputs([web / "out.parquet"])
    (web / "shards").mkdir()
    assert store_root(web / "deep" / "out.parquet") == web.resolve()
    fresh = tmp_path / "new-store"  # the run's own store, before its first commit
    with pytest.raises(OutputPathError, match="inside the store"):
        check_outputs([fresh / "out.parquet"], stores=[str(fresh)])
    check_outputs([tmp_path / "out.parquet"], inputs=[tmp_path / "q.jsonl"], stores=["s3://bucket/prefix"])
    assert not os.path.exists(tmp_path / "out.parquet")


def test_verify_reports_a_damaged_store_and_an_unreachable_one_in_lines(indexed, tmp_path):
    """Issue 22, finding 9: an overwritten manifest raised a TypeError inside verify, and a wrong S3 endpoint
    printed a 497-line traceback, both with exit 1 ("inconsistent"). Now: problem lines and exit 1, or one
    "could not check" line and exit 2."""
    import shutil
    import socket

    store, questions = indexed
    damaged = tmp_path / "damaged"
    shutil.copytree(store, damaged)
    manifest = next(damaged.glob("manifest-*.parquet"))
    shutil.copy(questions, manifest)  # what `--out STORE/manifest-N.parquet` used to do
    res = invoke("verify", "--store", str(damaged))
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit) and "Traceback" not in res.output, res.output
    assert "not a manifest of this store" in " ".join(res.output.split()), res.output

    pytest.importorskip("s3fs")
    import subprocess

    from conftest import ROOT

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
               AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_MAX_ATTEMPTS="1", COLUMNS="200")
    # A fresh process: this one may hold S3 clients of the loopback server that other tests started.
    proc = subprocess.run([*CLI, "verify", "--store", "s3://nobucket/store"], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "could not check" in out, out
    assert len(out.strip().splitlines()) <= 4 and "Traceback" not in out, out
    assert "testing" not in out  # no credential is printed
    # No store at all is "could not check" too (exit 2), not an inconsistent store (exit 1).
    missing = invoke("verify", "--store", str(tmp_path / "no-store"))
    assert missing.exit_code == 2 and "could not check" in missing.output and "no index at" in missing.output


def test_a_second_run_on_the_same_out_is_refused_or_waits(indexed, tmp_path):
    """Issue 22, finding 6: two `answer` runs with the same --out both exited 0, the last replacing the first's
    table, config and report. The holder here is a real process holding the real lock."""
    import subprocess
    import sys
    import time

    from conftest import ROOT
    from flows.answer import run_answer
    from storage.store.meta import StoreError

    store, questions = indexed
    out = tmp_path / "out.parquet"
    hold = ("import sys, time; from pathlib import Path; from storage.store.lock import output_lock\n"
            "with output_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(float(sys.argv[2]))")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out), "600"], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreError, match=rf"output {out} is locked by pid {holder.pid} .*--wait"):
            run_answer(questions, store, out, generator=SMALLEST_GENERATOR, max_new_tokens=2)
        res = invoke("answer", str(questions), "--store", str(store), "--out", str(out),
                   "--generator", SMALLEST_GENERATOR)
        assert res.exit_code == 2 and "an answer run is writing it" in " ".join(res.output.split()), res.output
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    # A holder that finishes while we wait: the run goes on after it, and leaves no lock behind.
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out), "3"], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "held"
    t0 = time.monotonic()
    rep = run_answer(questions, store, out, generator=SMALLEST_GENERATOR, max_new_tokens=2, lock_wait_s=120)
    holder.wait()
    assert rep.questions == 1 and out.exists() and time.monotonic() - t0 >= 1
    assert not out.with_name(out.name + ".lock").exists()


def test_s3_prefixes_with_dot_segments_are_refused():
    """Issue 22, finding 11: s3://b/./st was stored literally, another store than s3://b/st."""
    from storage.fs import store_location

    assert store_location("s3://b/st/") == "s3://b/st"
    for url in ("s3://b/./st", "s3://b/a/../st", "s3://b/a/./b"):
        with pytest.raises(ValueError, match="'.', '..' or empty segments"):
            store_location(url)


def _unwritable_folder() -> Path:
    """A folder no one may write in, root included (root ignores permission bits, so a chmod cannot make one):
    /sys refuses new files to every user on Linux."""
    import tempfile

    try:
        fd, probe = tempfile.mkstemp(dir="/sys")
    except OSError:
        return Path("/sys")
    os.close(fd)
    os.unlink(probe)
    pytest.skip("/sys is writable here")


def test_an_unwritable_out_folder_is_refused_before_any_work(indexed, tmp_path):
    """Issue 22, finding 11: a read-only --out folder was reported only after the first batch of answers had been
    generated and thrown away. Now the folder is written to (a probe file) before the flow starts."""
    import time

    store, questions = indexed
    folder = _unwritable_folder()
    with pytest.raises(OutputPathError, match=f"cannot write in {folder} "):
        check_outputs([folder / "deeper" / "results.parquet"])
    t0 = time.perf_counter()
    res = invoke("answer", str(questions), "--store", str(store), "--out", str(folder / "results.parquet"),
               "--generator", SMALLEST_GENERATOR)
    assert res.exit_code == 2 and f"cannot write in {folder}" in res.output, res.output
    assert time.perf_counter() - t0 < 10  # refused up front, not after loading a model
    with pytest.raises(OutputPathError, match="it is a file, not a folder"):
        check_outputs([questions / "results.parquet"])
    check_outputs([tmp_path / "new" / "deeper" / "results.parquet"])  # folders the run will create are fine
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".ragbatch-write-check-*"))
