"""Benchmark: ``refresh`` after 0%, 1% and 10% of the documents changed, against a full answer run (issue 21).

    python benchmarks/refresh.py                         # 300 questions on the 622-document demo corpus, CPU
    python benchmarks/refresh.py --questions 60 --generator smollm2-135m --no-write

One process, one Prefect (ephemeral) server, an answer cache of its own (a temp folder). The demo corpus is
written one file per document; the questions ask who created a model or when it was released (gold answers from
the corpus). Measured: a full ``answer`` run (every answer generated); then, for each share of documents changed
(a sentence appended to each, as benchmarks/incremental.py does), the re-index and the ``refresh`` of the table:
questions whose evidence changed, answers generated, wall and CPU seconds (this process: the flow runs in it).
Also: how many answers an answer run with ``-k 3`` reuses right after one with ``-k 5`` (the no-RAG arm: all).
Writes "## Refresh (issue 21)" in benchmarks/RESULTS.md unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from storage.paths import configure_environment  # noqa: E402

configure_environment()

from incremental import build_corpus, change, machine, write_results  # noqa: E402

HEADING = "## Refresh (issue 21)"
HEADER = ("| documents changed | documents re-indexed | questions whose evidence changed | answers generated | "
          "refresh wall | refresh CPU | of the full run | re-index |\n|---|---|---|---|---|---|---|---|")


def questions(path: Path, n: int) -> None:
    from tasks.demo.corpus import build_demo_corpus

    docs = [json.loads(x) for x in (build_demo_corpus() / "helm_models.jsonl").read_text().splitlines() if x]
    asks = [("Who created {title}?", "creator"), ("When was {title} released?", "release_date")]
    step = max(1, len(docs) // n)
    rows = []
    for i, d in enumerate(docs[::step][:n]):
        template, field = asks[i % 2]
        rows.append({"id": f"r{i:03d}", "question": template.format(title=d["title"]), "answers": [str(d[field])]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def measured(fn, *a, **kw):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(*a, **kw)
    return out, time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=300)
    ap.add_argument("--generator", default="qwen2.5-0.5b")
    ap.add_argument("--changes", default="0,1,10", help="percent of the documents changed, comma-separated")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ragbatch-refresh-"))
    os.environ["RAGBATCH_ANSWER_CACHE_DIR"] = str(work / "answer-cache")  # starts empty: the full run generates

    from flows.answer import run_answer
    from flows.index import run_index
    from flows.refresh import run_refresh
    from flows.runners import prefect_api

    files = build_corpus(work / "docs", "demo", 10**6)
    qfile = work / "q.jsonl"
    questions(qfile, args.questions)
    kw = {"generator": args.generator, "k": 5}
    rows = []
    with prefect_api():
        run_index(work / "docs", work / "store")
        full, full_s, full_cpu = measured(run_answer, qfile, work / "store", work / "results.parquet", **kw)
        n = full.questions
        print(f"full answer run: {n} questions, {full_s:.1f}s wall, {full_cpu:.1f}s CPU", flush=True)
        for round_, pct in enumerate(int(x) for x in args.changes.split(",")):
            if pct:
                change(files, pct / 100, round_)
            idx, idx_s, _ = measured(run_index, work / "docs", work / "store")
            rep, wall, cpu = measured(run_refresh, work / "results.parquet")
            made = 2 * rep.answer.questions - rep.answer.from_cache
            rows.append((pct, idx.changed, rep.summary["evidence"], made, wall, cpu, idx_s))
            print(f"{pct}% changed ({idx.changed} documents): evidence changed for {rep.summary['evidence']}, "
                  f"{made} answers generated, refresh {wall:.1f}s wall ({wall / full_s:.1%} of the full run), "
                  f"{cpu:.1f}s CPU; re-index {idx_s:.1f}s", flush=True)
        k3 = run_answer(qfile, work / "store", work / "k3.parquet", **dict(kw, k=3))
        print(f"-k 3 right after -k 5: {k3.from_cache} of {2 * n} answers reused", flush=True)
    table = "\n".join(f"| {pct}% | {docs} | {ev} | {made} of {2 * n} | {wall:.1f} s | {cpu:.1f} s | "
                      f"{wall / full_s:.1%} | {idx_s:.1f} s |" for pct, docs, ev, made, wall, cpu, idx_s in rows)
    section = f"""{HEADING}

`python {' '.join(['benchmarks/refresh.py', *sys.argv[1:]])}` on {machine()}: {n} questions on the demo corpus
(622 documents, one file each), generator `{args.generator}`, hybrid top-5. A full `answer` run (every answer
generated): {full_s:.1f} s wall, {full_cpu:.1f} s CPU. Then each share of the documents changed, the re-index and
`refresh` of the table (cumulative: each row starts from the previous one's store):

{HEADER}
{table}

An answer run with `-k 3` right after the one with `-k 5` reused {k3.from_cache} of its {2 * n} answers (every
no-RAG answer: its prompt does not depend on k).
"""
    print(section)
    if not args.no_write:
        write_results(section, HEADING)


if __name__ == "__main__":
    main()
