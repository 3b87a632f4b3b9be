"""Benchmark: the store on local disk vs on S3 (moto's server on loopback), same corpus, same run (issue 14).

    python benchmarks/objstore.py                      # 300 generated documents, 24 questions, CPU
    python benchmarks/objstore.py --n 100 --questions 8 --no-write

One process, one Prefect (ephemeral) server, one moto ``ThreadedMotoServer`` on 127.0.0.1. A warm-up index run
starts the server and loads the embedder first. Then, alternating local and S3 ``--repeats`` times (median):

- **index**: ``run_index`` of the whole corpus into a fresh store (goal: S3 ≤ 1.3× local);
- **answer**: ``run_answer`` of the questions with the smallest packaged generator against the indexed store,
  with the generation already loaded in the process (goal: S3 ≤ 1.1× local); and the cold load itself;
- **generation load vs shard count**: ``load_dense_index`` (every shard's sha256 checked) of stores holding the
  same 16,384 random unit rows (dim 384) split into 1…64 shards.

moto on loopback has no network latency and no S3 request cost; a real S3 adds ~10-30 ms per request, so the
shard-count table (one GET per file) is the one to scale by. Writes the section "## Object storage (issue 14)"
of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from storage.paths import configure_environment  # noqa: E402

configure_environment()

HEADING = "## Object storage (issue 14)"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
WORDS = ("harbor survey archive council library station vessel river mountain record measured catalogued "
         "restored compared estimated published northern southern winter summer tide glacier orchard").split()


def start_s3(stack: contextlib.ExitStack) -> str:
    """A fresh bucket on the tests' loopback S3 server (tests/helpers.py ``loopback_s3``: moto on a free
    127.0.0.1 port, the AWS variables pointing every client at it), up until ``stack`` closes."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers import loopback_s3

    return stack.enter_context(loopback_s3()).bucket()


def corpus(root: Path, n: int) -> Path:
    import random

    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        r = random.Random(i)
        text = " ".join(f"Record {i}: the {r.choice(WORDS)} {r.choice(WORDS)} of year {1900 + i % 120} was "
                        f"{' '.join(r.choice(WORDS) for _ in range(12))}." for _ in range(6))
        (root / f"doc-{i:05d}.txt").write_text(text)
    return root


def questions(path: Path, n: int) -> Path:
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"q{i}", "question": f"What was record {i * 7} about in year {1900 + i}?"})
                     + "\n")
    return path


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def load_vs_shards(work: Path, bucket: str, counts: list[int], rows: int = 16384, dim: int = 384) -> list[dict]:
    import pyarrow as pa
    import torch

    from storage.store import open_store
    from storage.store.schema import CHUNK_SCHEMA, ManifestRow
    from tasks.retrieval.search import load_dense_index

    out = []
    fp = {"id": "bench", "name": "bench", "pooling": "mean", "dim": dim}
    for n in counts:
        per = rows // n
        times = {}
        for where, loc in (("local", str(work / f"shards-{n}")), ("s3", f"s3://{bucket}/shards-{n}")):
            st = open_store(loc)
            writes = []
            for s in range(n):
                ids = [f"d{s}-{j}" for j in range(per)]
                chunks = pa.table({"chunk_id": [f"{d}#0" for d in ids], "doc_id": ids, "doc_sha256": ["h"] * per,
                                   "chunk_index": pa.array([0] * per, pa.int32()), "text": ["x"] * per,
                                   "char_start": [0] * per, "char_end": [1] * per,
                                   "n_tokens": pa.array([1] * per, pa.int32())})
                for f in CHUNK_SCHEMA:  # columns other steps add (e.g. pages): null here
                    if f.name not in chunks.column_names:
                        chunks = chunks.append_column(f, pa.nulls(per, f.type))
                emb = torch.nn.functional.normalize(torch.randn(per, dim), dim=1)
                man = [ManifestRow(doc_id=d, path=d, sha256="h", size=1, mtime=0.0, n_chunks=1, shard="",
                                   embedder="bench", chunking="c", status="indexed", indexed_at=0.0) for d in ids]
                writes.append(st.write_shard(emb, chunks, man))
            st.commit(fp, dim, writes)
            times[where] = statistics.median(
                timed(lambda loc=loc: load_dense_index(open_store(loc), "cpu", check_sha=True)) for _ in range(3))
        out.append({"shards": n, "rows_per_shard": per, "local_s": times["local"], "s3_s": times["s3"]})
        print(f"load {n:>3} shards × {per} rows: local {times['local']:.3f}s, s3 {times['s3']:.3f}s", flush=True)
    return out


def write_results(section: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(HEADING)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text.rstrip("\n") + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="generated documents")
    ap.add_argument("--questions", type=int, default=24)
    ap.add_argument("--batch-docs", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--generator", default="smollm2-135m-instruct")
    ap.add_argument("--shard-counts", default="1,4,16,64")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    stack = contextlib.ExitStack()
    bucket = start_s3(stack)
    from flows.answer import run_answer
    from flows.index import run_index
    from flows.runners import prefect_api
    from tasks.config import GenerationConfig
    from tasks.retrieval.search import clear_index_cache, open_index

    work = Path(tempfile.mkdtemp(prefix="ragbatch-objstore-"))
    docs, qfile = corpus(work / "docs", args.n), questions(work / "q.jsonl", args.questions)
    gs = GenerationConfig(generator=args.generator, max_new_tokens=16)
    rows: dict[str, list[float]] = {k: [] for k in ("index_local", "index_s3", "answer_local", "answer_s3",
                                                     "load_local", "load_s3")}
    with prefect_api():
        run_index(corpus(work / "warm", 2), work / "warm-store")  # server up, embedder loaded
        chunks = 0
        for rep in range(args.repeats):
            for where in ("local", "s3") if rep % 2 == 0 else ("s3", "local"):  # alternate who goes first
                loc = str(work / f"store-{rep}") if where == "local" else f"s3://{bucket}/store-{rep}"
                t0 = time.perf_counter()
                r = run_index(docs, loc, batch_docs=args.batch_docs)
                rows[f"index_{where}"].append(time.perf_counter() - t0)
                chunks = r.live_chunks
                clear_index_cache()
                rows[f"load_{where}"].append(timed(lambda loc=loc: open_index(loc, "cpu")))
                if rep == 0:  # the generator's first load is not the store's cost
                    run_answer(qfile, loc, work / f"warm-{where}.parquet", k=5, generation=gs, retriever="hybrid",
                               device="cpu")
                rows[f"answer_{where}"].append(timed(lambda loc=loc, rep=rep, where=where: run_answer(
                    qfile, loc, work / f"a-{where}-{rep}.parquet", k=5, generation=gs, retriever="hybrid",
                    device="cpu")))
                print(f"repeat {rep} {where}: index {rows[f'index_{where}'][-1]:.1f}s, load "
                      f"{rows[f'load_{where}'][-1]:.3f}s, answer {rows[f'answer_{where}'][-1]:.1f}s", flush=True)
        counts = [int(x) for x in args.shard_counts.split(",")]
        shards = load_vs_shards(work, bucket, counts)
    stack.close()
    med = {k: statistics.median(v) for k, v in rows.items()}
    ratio_i, ratio_a = med["index_s3"] / med["index_local"], med["answer_s3"] / med["answer_local"]
    print(f"index ratio {ratio_i:.2f} (goal ≤ 1.3), answer ratio {ratio_a:.2f} (goal ≤ 1.1)")
    cmd = " ".join(["python benchmarks/objstore.py"] + sys.argv[1:])
    table = "\n".join(f"| {s['shards']} | {s['rows_per_shard']} | {s['local_s'] * 1000:.0f} | {s['s3_s'] * 1000:.0f} | "
                      f"{s['s3_s'] / s['local_s']:.1f}× |" for s in shards)
    section = f"""{HEADING}

`{cmd}` — {platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU only; the S3 store on moto
{__import__('moto').__version__}'s server on 127.0.0.1 (no network latency), median of {args.repeats} alternating runs.
{args.n} generated documents ({chunks} chunks, batches of {args.batch_docs}), {args.questions} questions answered
with and without context by `{args.generator}` (16 new tokens), hybrid retrieval, k=5.

| step | local disk | S3 (moto, loopback) | S3 / local | goal |
|---|---|---|---|---|
| index (whole corpus, fresh store) | {med['index_local']:.1f} s | {med['index_s3']:.1f} s | {ratio_i:.2f}× | ≤ 1.3× |
| answer (generation loaded) | {med['answer_local']:.1f} s | {med['answer_s3']:.1f} s | {ratio_a:.2f}× | ≤ 1.1× |
| load the generation (cold, sha256 checked) | {med['load_local'] * 1000:.0f} ms | {med['load_s3'] * 1000:.0f} ms \
| {med['load_s3'] / med['load_local']:.1f}× | |

Generation load time against shard count (16,384 rows of dim 384 in all, `load_dense_index` with checksums):

| shards | rows per shard | local ms | S3 ms | S3 / local |
|---|---|---|---|---|
{table}
"""
    print(section)
    if not args.no_write:
        write_results(section)


if __name__ == "__main__":
    main()
