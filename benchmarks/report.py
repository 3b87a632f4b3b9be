"""Benchmark: the answer report (RESULTS.report.html) for up to 10,000 questions — size, time, linearity, browser.

    python benchmarks/report.py [--questions 10000] [--k 5] [--browser]

Rows have the answer table's real shape and SQuAD v1.1 dev text: each question's gold paragraph plus k-1 other
paragraphs as its passages, its gold answer as the RAG answer and another question's answer as the no-RAG one.
For 1/10, 1/4, 1/2 and all of the questions it times preparing the data (tasks/reporting/cards.py), rendering
(storage/reports/html.py) and writing, and the peer measured in the same run: writing the same rows as the
Parquet result table (storage/runs/results.py). ``--browser`` opens the largest report from file:// in Debian's
chromium and times the first cards, the "changed only" filter and a text search.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from storage.reports.html import render_answer_report  # noqa: E402
from storage.runs.results import write_results  # noqa: E402
from tasks.evaluation.datasets import fetch_squad_dev  # noqa: E402
from tasks.reporting.cards import build_report  # noqa: E402


def squad_rows(n: int, k: int, seed: int = 0, distinct: bool = False) -> list[dict]:
    """``distinct``: every passage of every question made unique (no text shared between questions)."""
    data = json.loads(fetch_squad_dev().read_text())["data"]
    paras, qas = [], []
    for art in data:
        for p in art["paragraphs"]:
            pid = len(paras)
            paras.append((f"{art['title']}#{pid}", p["context"]))
            qas += [(q, pid) for q in p["qas"]]
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        q, pid = qas[i % len(qas)]
        others = rng.sample(range(len(paras)), k - 1)
        ids = [pid] + [o for o in others if o != pid][: k - 1]
        golds = [a["text"] for a in q["answers"]]
        wrong = qas[rng.randrange(len(qas))][0]["answers"][0]["text"]
        rows.append({
            "question_id": f"{q['id']}-{i}", "question": q["question"], "source": "squad", "gold_answers": golds,
            "chunk_ids": [f"{paras[j][0]}#{i if distinct else 0}" for j in ids], "doc_ids": [paras[j][0] for j in ids],
            "scores": [round(1 / (61 + r), 6) for r in range(len(ids))],
            "dense_scores": [round(rng.uniform(0.2, 0.8), 6) for _ in ids],
            "chunk_texts": [paras[j][1] + (f" [{i}.{r}]" if distinct else "") for r, j in enumerate(ids)],
            "no_rag_answer": wrong, "rag_answer": golds[0],
            "rag_raw": golds[0], "answers_differ": wrong.lower() != golds[0].lower(), "generator": "g",
            "embedder": "all-MiniLM-L6-v2", "retriever": "hybrid", "k": k, "retrieve_s": 0.01, "generate_s": 0.5,
        })
    return rows


def measure(rows: list[dict], out: Path) -> dict:
    """CPU seconds (process time: the machine is shared, so wall time says more about the neighbours) of each
    step, the wall time of the whole, and the sizes."""
    cpu, wall = time.process_time, time.perf_counter
    w0, t0 = wall(), cpu()
    report = build_report(rows, {"created_at": "bench"}, title="bench.parquet")
    t1 = cpu()
    page = render_answer_report(report).encode()
    t2 = cpu()
    html = out / f"r{len(rows)}.report.html"
    html.write_bytes(page)
    t3, w3 = cpu(), wall()
    pq = write_results(out / f"r{len(rows)}.parquet", rows, {})
    t4 = cpu()
    return {"questions": len(rows), "prepare_s": t1 - t0, "render_s": t2 - t1, "write_s": t3 - t2,
            "report_s": t3 - t0, "wall_s": w3 - w0, "parquet_s": t4 - t3, "html_mb": len(page) / 1e6,
            "parquet_mb": pq.stat().st_size / 1e6, "chunks": len(report["chunks"]), "path": str(html),
            "changed": report["summary"]["changed"]}


def browser(path: str, changed: int, n: int) -> dict:
    from playwright.sync_api import expect, sync_playwright

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--disable-sync"]
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=args)
        page = b.new_page(viewport={"width": 1400, "height": 1000})
        t0 = time.perf_counter()
        page.goto(Path(path).as_uri(), timeout=300_000)
        page.locator("article.card").first.wait_for(timeout=300_000)
        t_open = time.perf_counter() - t0
        t0 = time.perf_counter()
        page.locator("#f-changed").check()
        expect(page.locator("#count")).to_have_text(f"{changed} of {n} questions", timeout=120_000)
        t_filter = time.perf_counter() - t0
        page.locator("#f-changed").uncheck()
        t0 = time.perf_counter()
        page.locator("#f-text").fill("zzqqxx-no-such-text")
        expect(page.locator("#count")).to_have_text(f"0 of {n} questions", timeout=120_000)
        t_search = time.perf_counter() - t0 - 0.2  # minus the 200 ms input debounce
        heap = page.evaluate("performance.memory ? performance.memory.usedJSHeapSize / 1e6 : -1")
        b.close()
    return {"open_s": t_open, "filter_s": t_filter, "search_s": t_search, "js_heap_mb": heap}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=10_000)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--browser", action="store_true", help="also open the largest report in chromium")
    ap.add_argument("--distinct", action="store_true", help="no passage shared between questions (the worst case "
                    "for size: no passage stored once for several questions)")
    args = ap.parse_args()
    all_rows = squad_rows(args.questions, args.k, distinct=args.distinct)
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}; k = {args.k}, SQuAD v1.1 dev text"
          f"{', every passage distinct' if args.distinct else ''}")
    print("| questions | prepare CPU s | render CPU s | write CPU s | report CPU s | CPU ms/question | report wall s | "
          "Parquet CPU s (peer) | report / Parquet | HTML MB | Parquet MB | distinct passages |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        last = None
        for n in sorted({max(1, args.questions // 10), max(1, args.questions // 4), max(1, args.questions // 2),
                         args.questions}):
            m = measure(all_rows[:n], Path(tmp))
            print(f"| {n:,} | {m['prepare_s']:.2f} | {m['render_s']:.2f} | {m['write_s']:.2f} | {m['report_s']:.2f} | "
                  f"{1000 * m['report_s'] / n:.3f} | {m['wall_s']:.2f} | {m['parquet_s']:.2f} | "
                  f"{m['report_s'] / m['parquet_s']:.1f}× | "
                  f"{m['html_mb']:.1f} | {m['parquet_mb']:.1f} | {m['chunks']:,} |", flush=True)
            last = m
        print(f"\nload average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        if args.browser and last:
            b = browser(last["path"], last["changed"], last["questions"])
            print(f"\nchromium, {last['questions']:,} questions from file://: first cards after {b['open_s']:.2f}s, "
                  f"'changed only' {b['filter_s']:.2f}s, a text search over every question, answer and passage "
                  f"{b['search_s']:.2f}s; JS heap {b['js_heap_mb']:.0f} MB")


if __name__ == "__main__":
    main()
