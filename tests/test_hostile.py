"""Issue 10: hostile and careless input, through the real CLI and flows on small corpora.

- no file outside the docs folder gets in (symlinks), special files cannot hang a run;
- no index is wiped by a wrong, empty or missing docs folder, and a killed run keeps the previous documents;
- nothing crashes after its work is done (rich markup in paths, ids and messages; emoji codes in text);
- Markdown outputs escape HTML and keep one table row per row (checked with a real CommonMark renderer,
  :func:`assert_safe_markdown`, so new Markdown outputs can get the same check);
- out-of-range numbers and wrong paths are refused before any work, with a message instead of a traceback.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from conftest import ROOT, SMALLEST_GENERATOR, write_corpus
from helpers import CLI, invoke
from storage.store import open_store
from storage.store.schema import ManifestRow
from storage.testing import KILL_ENV

SECRET = "The vault combination is zebra quartz 9931 and the root password is hunter2."
HOSTILE = '<script>alert("x")</script> <img src=x onerror=alert(1)> ![t](http://tracker.invalid/p.png)\n| a | b |'


def _run(env: dict[str, str], *args: str) -> tuple[int, str]:
    """``ragbatch ARGS`` in a subprocess (flows log through Prefect's console handler, which CliRunner breaks):
    its exit code and its stdout + stderr with line wrapping undone."""
    proc = subprocess.run([*CLI, *args], env=dict(env, COLUMNS="200"), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, " ".join((proc.stdout + proc.stderr).split())


def _doc_ids(store: Path) -> set[str]:
    return set(open_store(store).manifest()["doc_id"].to_pylist())


def assert_safe_markdown(md: str, table_columns: int | None = None) -> None:
    """Render ``md`` as GitHub-flavoured Markdown: no HTML element from the data, no image, intact table rows."""
    html = MarkdownIt("commonmark").enable("table").render(md)
    for tag in ("<script", "<iframe", "<b>"):  # escaped, they show as text: "&lt;script&gt;"
        assert tag not in html, f"{tag} rendered live:\n{html}"
    for img in re.findall(r"<img[^>]*>", html):  # only the report's own plots, by relative path
        assert re.fullmatch(r'<img src="[\w.-]+\.png" alt="[\w@ ]*" />', img), f"{img} rendered live:\n{html}"
    tables = html.split("<table>")[1:]
    for table in tables:  # every body row has the header's cells: no row was split or merged
        head, _, body = table.partition("<tbody>")
        for row in body.split("<tr>")[1:]:
            assert len(re.findall(r"<td[ >]", row)) == len(re.findall(r"<th[ >]", head)), row
    if table_columns is not None:
        assert tables and len(re.findall(r"<th[ >]", tables[0].partition("<tbody>")[0])) == table_columns, html


# ---------------------------------------------------------------- finding 1: symlinks
def test_symlinks_outside_the_folder_are_skipped_and_purged(api_env, tmp_path):
    outside = write_corpus(tmp_path / "outside", {"secret.txt": SECRET, "more/notes.txt": SECRET})
    docs = write_corpus(tmp_path / "docs", {"good.txt": "Paris is the capital of France.",
                                            "sub/inner.md": "Rome is the capital of Italy."})
    (docs / "link_out.txt").symlink_to(outside / "secret.txt")
    (docs / "dir_out").symlink_to(outside / "more")
    (docs / "link_in.txt").symlink_to(docs / "good.txt")
    (docs / "dir_in").symlink_to(docs / "sub")
    (docs / "loop.txt").symlink_to(docs / "loop.txt")
    (docs / "broken.txt").symlink_to(docs / "missing.txt")
    os.mkfifo(docs / "fifo.txt")  # reading it would block the run forever
    store = tmp_path / "store"

    # Opt-in (documented as unsafe): the outside file is indexed.
    code, out = _run(api_env, "index", str(docs), "--store", str(store), "--follow-symlinks")
    assert code == 0, out
    assert "link_out.txt" in _doc_ids(store)

    # By default the link is skipped with its reason, and the document it brought in is removed.
    code, text = _run(api_env, "index", str(docs), "--store", str(store))
    assert code == 0, text
    for name, reason in [("link_out.txt", "symlink outside the folder"), ("dir_out", "symlink outside the folder"),
                         ("loop.txt", "symlink loop"), ("broken.txt", "broken symlink"),
                         ("dir_in", "symlink to a folder"), ("fifo.txt", "not a regular file")]:
        assert f"skipped {name}: {reason}" in text, (name, text)
    assert "removed 1" in text
    assert _doc_ids(store) == {"good.txt", "link_in.txt", "sub/inner.md"}
    for retriever in ("bm25", "dense"):
        out = invoke("search", "vault combination zebra quartz root password", "--store", str(store), "-k", "10",
                   "--retriever", retriever)
        assert out.exit_code == 0 and "link_out" not in out.output and "zebra" not in out.output, out.output
    assert open_store(store).verify().problems == []


# ---------------------------------------------------------------- finding 3: rich markup and emoji
def test_markup_and_emoji_in_names_ids_and_text_print_verbatim(api_env, tmp_path):
    from storage.reports.markdown import answers_markdown

    text = "root:x:0:0 :smile: [bold]not bold[/bold] [/x]"
    docs = write_corpus(tmp_path / "docs", {
        "x[/y].bin": b"\x00",  # the folder "x[" holding "y].bin": an unsupported file whose message has markup
        "notes.jsonl": json.dumps({"id": "[/x]", "text": text}) + "\n" + json.dumps({"id": "[/x]", "text": "dup"})
                       + "\n" + json.dumps({"id": "hostile", "text": HOSTILE}) + "\n",
    })
    store = tmp_path / "st[/re]"
    code, flat = _run(api_env, "index", str(docs), "--store", str(store))
    assert code == 0, flat
    assert "skipped x[/y].bin: unsupported file type .bin" in flat
    assert "duplicate document id 'notes.jsonl#[/x]'" in flat

    out = invoke("search", "root smile bold", "--store", str(store), "-k", "1", "--retriever", "bm25")
    assert out.exit_code == 0 and text in out.output, out.output  # no ❌ for ":x:", no 😄 for ":smile:"
    out = invoke("verify", "--store", str(store))
    assert out.exit_code == 0 and f"OK {store.resolve()}" in " ".join(out.output.split()), out.output

    out = invoke("search", "q", "--store", str(tmp_path / "no[/where]"))  # _fail() with markup in the message
    assert out.exit_code == 2 and "no index at" in out.output and "no[/where]" in out.output, out.output

    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"id": "[/x]", "question": f"What is :smile:? {HOSTILE}"}) + "\n"
                         + json.dumps({"id": "[/x]", "question": "dup"}) + "\n")
    results = tmp_path / "res[/x]" / "out.parquet"
    code, flat = _run(api_env, "answer", str(questions), "--store", str(store), "--out", str(results), "-k", "2",
                      "--generator", SMALLEST_GENERATOR, "--max-new-tokens", "4")
    assert code == 0, flat
    assert "duplicate id '[/x]'" in flat and ":smile:" in flat and "😄" not in flat

    # Finding 4 on the same real rows: the Prefect `answers` artifact of this run.
    from dataclasses import replace

    import pyarrow.parquet as pq

    from storage.runs.results import ResultRow

    rows = [ResultRow.from_record(r) for r in pq.read_table(results).to_pylist()]  # (polars: "[" would be a glob)
    rows[0] = replace(rows[0], rag_answer=HOSTILE)  # what a model could answer after reading the hostile document
    md = answers_markdown(rows)
    assert_safe_markdown(md, table_columns=6)
    assert md.count("\n") == 1 + len(rows)  # header, rule, one line per row


# ---------------------------------------------------------------- finding 4: Markdown reports
def test_summary_markdown_escapes_html_and_newlines(tmp_path):
    from storage.reports.eval import summary_markdown

    summary = {"questions": 1, "recall@1": 1.0, "mrr@10": 1.0, "ndcg@10": 1.0, "rag_em": 0.0, "no_rag_em": 0.0,
               "rag_f1": 0.0, "no_rag_f1": 0.0, "rag_contains": 0.0, "no_rag_contains": 0.0, "faithfulness": 0.0,
               "differ": 1, "grounded": 1, "perturbed": 0, "misled": 0, "f1_improved": 0, "f1_worsened": 0,
               "f1_unchanged": 1, "em_improved": 0, "em_worsened": 0, "em_unchanged": 1, "rag_wrong": 1,
               "fail_chunker": 0, "fail_retriever": 0, "fail_generator": 1}
    example = {"question": f"Who? {HOSTILE}", "gold_answers": ["<b>gold</b>"], "no_rag_answer": HOSTILE,
               "rag_answer": "<iframe src=x></iframe>", "chunks": [("doc`<x>`|#0", HOSTILE)]}
    config = {"dataset": "data/<script>x</script>\n| x", "retriever": "hybrid", "embedder": "e", "generator": "g",
              "context_k": 1}
    md = summary_markdown(summary, {"grounded": [example]}, config)
    assert_safe_markdown(md, table_columns=2)
    assert "<script>" not in md and "&lt;script&gt;" in md
    title = md.splitlines()[0]
    assert title.startswith("# ragbatch evaluation: data/&lt;script&gt;") and "| x" in title  # one line


# ---------------------------------------------------------------- finding 2: mass removal
def _texts(n: int, tag: str) -> dict[str, str]:
    words = "amber basalt cedar delta ember fjord granite harbor indigo juniper kestrel lagoon".split()
    return {f"{tag}-{i}.txt": f"{tag} record {i}: {words[i % 12]} {words[(i * 5) % 12]} {tag}{i}word" for i in range(n)}


def test_a_wrong_or_empty_folder_never_wipes_the_index(prefect_harness, api_env, tmp_path):
    from flows.index import run_index
    from tasks.indexing.plan import MassRemovalError

    old = _texts(6, "old")
    docs = write_corpus(tmp_path / "docs", old)
    store = tmp_path / "store"
    run_index(docs, store, batch_docs=3)
    before = {r["doc_id"]: (r["shard"], r["indexed_at"]) for r in open_store(store).manifest().to_pylist()}
    gen = open_store(store).meta().generation
    other = write_corpus(tmp_path / "other", _texts(4, "new"))
    empty = tmp_path / "empty"
    empty.mkdir()

    with pytest.raises(MassRemovalError, match=r"would remove 6 of the 6 documents .* --allow-mass-removal"):
        run_index(other, store)
    with pytest.raises(MassRemovalError, match="leave it empty"):
        run_index(empty, store, allow_mass_removal=True)  # an empty (unmounted) folder: never, even when allowed
    with pytest.raises(FileNotFoundError):
        run_index(tmp_path / "missing", store)
    dry = run_index(other, store, dry_run=True)
    assert dry.removed == 6 and "--allow-mass-removal" in dry.removal_refused
    assert run_index(other, store, dry_run=True, max_removal_ratio=1.0).removal_refused is None  # configurable
    assert open_store(store).meta().generation == gen and _doc_ids(store) == set(before)
    code, out = _run(api_env, "index", str(other), "--store", str(store))
    assert code == 2 and "error: indexing" in out and "--allow-mass-removal" in out, out  # (Prefect logs a traceback)

    # Allowed, and killed after its second batch commit: the generation before the run is all still there.
    cmd = [*CLI, "index", str(other), "--store", str(store), "--batch-docs", "1",
           "--allow-mass-removal"]
    proc = subprocess.run(cmd, env=dict(api_env, **{KILL_ENV: "after-index-json:2"}), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    now = {r["doc_id"]: (r["shard"], r["indexed_at"]) for r in open_store(store).manifest().to_pylist()}
    assert {d: now[d] for d in before} == before and len(now) == 8  # old documents untouched, two new ones
    assert open_store(store).verify().problems == []
    from tasks.retrieval.search import search

    queries = [old[f"old-{i}.txt"] for i in range(6)]
    for retriever in ("dense", "bm25"):
        got, _ = search(str(store), queries, k=1, retriever=retriever)
        assert [r.doc_ids[0] for r in got] == [f"old-{i}.txt" for i in range(6)], retriever

    proc = subprocess.run(cmd, env=api_env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _doc_ids(store) == {f"new-{i}.txt" for i in range(4)}
    assert open_store(store).verify().problems == [] and open_store(store).verify().orphans == []


# ---------------------------------------------------------------- finding 8: refused up front, no traceback
def test_bad_numbers_and_paths_are_refused_with_a_message(api_env, tmp_path):
    docs = write_corpus(tmp_path / "docs", {"a.txt": "Alpha."})
    t0 = time.monotonic()
    for args, msg in [(["search", "q", "--store", str(tmp_path), "-k", "-1"], "-k -1: must be at least 1"),
                      (["search", "q", "--store", str(tmp_path), "--rerank-depth", "0"], "--rerank-depth 0"),
                      (["index", str(docs), "--store", str(tmp_path / "s"), "--chunk-tokens", "0"],
                       "--chunk-tokens 0: must be at least 1"),
                      (["index", str(docs), "--store", str(tmp_path / "s"), "--overlap-tokens", "300"],
                       "--overlap-tokens 300: must be between 0 and 100"),
                      # issue 20, smell 2: passed the CLI (overlap < chunk) and failed inside the flow (≤ half)
                      (["index", str(docs), "--store", str(tmp_path / "s"), "--overlap-tokens", "150"],
                       "--overlap-tokens 150: must be between 0 and 100"),
                      (["index", str(docs), "--store", str(tmp_path / "s"), "--chunk-tokens", "4"],
                       "--chunk-tokens 4: must be at least 8"),
                      (["index", str(docs), "--store", str(tmp_path / "s"), "--max-removal-ratio", "2"],
                       "--max-removal-ratio 2: must be between 0 and 1"),
                      (["answer", str(docs), "--store", str(tmp_path), "-k", "0"], "-k 0: must be at least 1"),
                      (["answer", str(docs), "--store", str(tmp_path), "--out", str(docs)], "is a directory"),
                      (["answer", str(docs), "--store", str(tmp_path), "--dtype", "fp8"], "--dtype 'fp8'"),
                      (["answer", str(docs), "--store", str(tmp_path), "--prompt", "nope"], "unknown prompt 'nope'"),
                      (["eval", "squad", "--store", str(tmp_path), "--context-k", "0"], "--context-k 0"),
                      (["eval", "squad", "--store", str(tmp_path), "--out", str(docs / "a.txt")], "is a file")]:
        out = invoke(*args)
        assert out.exit_code == 2 and msg in " ".join(out.output.split()), (args, out.output)
    assert time.monotonic() - t0 < 10 and not (tmp_path / "s").exists()  # before any flow or server start-up

    afile = tmp_path / "a-file"
    afile.write_text("not a store")
    code, out = _run(api_env, "index", str(docs), "--store", str(afile))
    assert code == 2 and "is a file, not a store" in out and "Errno" not in out, out

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "index.json").write_text("[]")
    out = invoke("verify", "--store", str(bad))
    assert out.exit_code == 1 and "problem: " in out.output and "not an object" in out.output, out.output
    assert "Traceback" not in out.output
    out = invoke("search", "q", "--store", str(bad))
    assert out.exit_code == 2 and "not an object" in out.output, out.output


def test_a_full_disk_names_the_file_and_keeps_the_previous_generation(tmp_path):
    """Finding 8: "No space left on device" names the file being written; the committed generation stays valid."""
    import pyarrow as pa
    import torch

    tiny = tmp_path / "tiny"
    tiny.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(tiny)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"needs a small tmpfs (mount as root): {mounted.stderr.decode(errors='replace').strip()}")
    try:
        st = open_store(tiny / "store")
        fp = {"id": "fp-test", "name": "model-test", "pooling": "mean", "dim": 64}

        def shard(doc: str, rows: int):
            chunks = pa.Table.from_pylist([
                {"chunk_id": f"{doc}#{i}", "doc_id": doc, "doc_sha256": "h", "chunk_index": i, "text": "t",
                 "char_start": 0, "char_end": 1, "n_tokens": 1} for i in range(rows)])
            manifest = [ManifestRow(doc_id=doc, path=doc, sha256="h", size=1, mtime=0.0, n_chunks=rows, shard="",
                                    embedder=fp["id"], chunking="c", status="indexed", indexed_at=0.0)]
            emb = torch.nn.functional.normalize(torch.randn(rows, 64), dim=1)
            return st.write_shard(emb, chunks, manifest)

        meta = st.commit(fp, 64, [shard("small", 2)])
        with pytest.raises(OSError, match=rf"No space left on device while writing {re.escape(str(st.shard_dir))}/"):
            shard("big", 4000)  # 1 MB of float32 into 256 KB
        assert st.verify().problems == [] and st.meta().generation == meta.generation
    finally:
        subprocess.run(["umount", str(tiny)], check=False)


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live children of ``pid``, from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append((int(stat.parent.name), cmd))
    return out


def _alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_cli_takes_its_temporary_prefect_server_with_it(tmp_path):
    """Finding 7: SIGKILL the CLI while its temporary Prefect server runs; the server must be gone in seconds."""
    docs = write_corpus(tmp_path / "docs", {"a.txt": "Alpha is the first letter.", "b.txt": "Beta is second."})
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PYTHONPATH=str(ROOT))
    cli = subprocess.Popen([*CLI, "index", str(docs), "--store", str(tmp_path / "s")],
                           env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, servers = time.monotonic() + 120, []
        while not servers and time.monotonic() < deadline and cli.poll() is None:
            servers = [pid for pid, cmd in _children(cli.pid) if "uvicorn" in cmd]
            time.sleep(0.2)
        assert servers, "the CLI never started its temporary Prefect server"
    finally:
        cli.send_signal(signal.SIGKILL)
        cli.wait()
    deadline = time.monotonic() + 10
    while any(map(_alive, servers)) and time.monotonic() < deadline:
        time.sleep(0.2)
    leftover = [p for p in servers if _alive(p)]
    for p in leftover:
        os.kill(p, signal.SIGKILL)
    assert not leftover, "the temporary Prefect server outlived the killed CLI"


def test_a_huge_document_is_a_batch_of_its_own(prefect_harness, api_env, tmp_path):
    """Issue 10 finding 6: the small files around a huge document are committed before it, and survive a kill."""
    from tasks.indexing.plan import document_batches, large_documents
    from tasks.ingest.load import load_documents

    small = {f"{c}.txt": f"Small note {c}: the {c} key opens the shed." for c in "abcd"}
    big = " ".join(f"Paragraph {i} of the big report mentions ledger entry {i * 7}." for i in range(1500))
    docs = write_corpus(tmp_path / "docs", {**small, "big.txt": big})
    loaded = load_documents(docs).documents
    batches = document_batches(loaded, batch_docs=256, batch_chars=20_000)
    assert [[d.doc_id for d in b] for b in batches] == [["a.txt", "b.txt"], ["big.txt"], ["c.txt", "d.txt"]]
    assert document_batches(loaded, batch_docs=3, batch_chars=10**9)[0] == loaded[:3]  # the document count still caps
    (warning,) = large_documents(loaded, limit=50_000)
    assert "big.txt" in warning and "one batch of its own" in warning

    # Killed while the big document's shard is written: the two small files before it are committed.
    store = tmp_path / "store"
    cmd = [*CLI, "index", str(docs), "--store", str(store), "--batch-chars", "20000"]
    proc = subprocess.run(cmd, env=dict(api_env, **{KILL_ENV: "mid-shard:2"}), cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert {r["doc_id"] for r in open_store(store).manifest().to_pylist()} == {"a.txt", "b.txt"}
    assert open_store(store).verify().problems == []
    proc = subprocess.run(cmd, env=api_env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shards = {r["doc_id"]: r["shard"] for r in open_store(store).manifest().to_pylist()}
    assert len(shards) == 5 and len(set(shards.values())) == 3 and shards["big.txt"] not in {shards["a.txt"],
                                                                                             shards["c.txt"]}
