"""Prefect orchestration overhead, and index throughput on Dask (issue 6). A benchmark, not a test.

1. The demo's index + answer under Prefect (``run_index`` / ``run_answer``, a local Prefect server started up
   front and not timed) against the same task functions called directly (``task.fn(...)`` in the flows' order,
   no Prefect at all), in one process, alternating the order each round; every run indexes into a fresh store.
   Models are loaded once before timing (both paths use the same per-process caches).
2. Index throughput of the same corpus with ``--runner dask`` on a LocalCluster of 1 and 2 workers (cluster
   start-up and each worker's model load included: that is what a user waits for), next to the thread runner.

    python benchmarks/orchestration.py [--questions 4] [--generator smollm2-135m-instruct] [--rounds 4]
                                       [--batch-docs 256] [--dask-batch-docs 64] [--json out/orchestration.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from storage.paths import configure_environment  # noqa: E402

configure_environment()


def machine() -> dict:
    from tasks.device import cpu_name, memory_bytes

    cpu, ram = cpu_name(), (memory_bytes("MemTotal") or 0) / 1024**3
    import torch

    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gib": round(ram, 1), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "load_avg_at_start": os.getloadavg()}


def direct_index(docs: str, store: str, batch_docs: int) -> int:
    """index_flow's steps with the task functions called directly (``.fn``): no Prefect."""
    from prefect.logging import disable_run_logger

    from flows.index import compact_task, embed_batch_task, load_task, plan_task, resolve_task
    from storage.store import open_store
    from tasks.config import IndexConfig
    from tasks.indexing.plan import compaction_due
    from tasks.ingest.chunk import ChunkSettings

    ic = IndexConfig()
    settings = ChunkSettings(ic.chunk_tokens, ic.overlap_tokens)
    with disable_run_logger():
        config = resolve_task.fn(ic.embedder)
        loaded = load_task.fn(docs, ic.follow_symlinks)
        st = open_store(store)
        with st.lock():
            plan = plan_task.fn(store, loaded, config, settings)
            by_id = {d.doc_id: d for d in loaded.documents}
            todo = [by_id[i] for i in plan.to_embed]
            fp, dim = config.fingerprint, config.dim
            meta = st.commit(fp, dim, [], remove_doc_ids=set(plan.removed))
            chunks = 0
            for i in range(0, len(todo), batch_docs):
                r = embed_batch_task.fn(store, todo[i : i + batch_docs], config, settings, None)
                meta = st.commit(fp, dim, [r.shard])
                chunks += r.chunks
            if compaction_due(meta, ic.compact_dead_ratio):
                compact_task.fn(store, ic.compact_dead_ratio)
    return chunks


def direct_answer(questions: str, store: str, out: str, generator: str, k: int, max_new_tokens: int) -> int:
    """answer_flow's steps with the task functions called directly (``.fn``): no Prefect."""
    from prefect.logging import disable_run_logger

    from flows.answer import (
        BatchAnswers,
        answers_markdown,
        generate_task,
        load_questions_task,
        result_rows,
        retrieve_task,
        write_task,
    )
    from tasks.config import GenerationConfig, RetrievalConfig
    from tasks.retrieval.search import embedder_for_store

    rc, gs = RetrievalConfig(k=k), GenerationConfig(generator=generator, max_new_tokens=max_new_tokens)
    with disable_run_logger():
        config = embedder_for_store(store, None)
        loaded = load_questions_task.fn([questions])
        qs = loaded.questions
        hits, t_ret = retrieve_task.fn(store, qs, rc, config, None)
        b = BatchAnswers(hits, generate_task.fn(gs, qs, hits, None), t_ret)
        rows = result_rows(qs, b, rc, generator, config.name)
        write_task.fn(out, rows, {"flow": "answer", "generator": generator, "k": k})
        answers_markdown(rows)
    return len(rows)


def prefect_index(docs: str, store: str, batch_docs: int, **kw) -> int:
    from flows.index import run_index

    return run_index(docs, store, batch_docs=batch_docs, **kw).chunks_embedded


def prefect_answer(questions: str, store: str, out: str, generator: str, k: int, max_new_tokens: int) -> int:
    from flows.answer import run_answer

    return run_answer(questions, store, out, k=k, generator=generator, max_new_tokens=max_new_tokens).questions


def overhead(runs: list[dict]) -> dict:
    """Medians per stage, and the median of the per-round ratios (each round runs both paths back to back)."""
    out: dict = {}
    for key in ("index_s", "answer_s", "total_s"):
        def val(x: dict, key: str = key) -> float:
            return x["index_s"] + x["answer_s"] if key == "total_s" else x[key]

        d = [val(x) for x in runs if x["mode"] == "direct"]
        p = [val(x) for x in runs if x["mode"] == "prefect"]
        out[key] = {"direct": statistics.median(d), "prefect": statistics.median(p),
                    "overhead_of_medians": statistics.median(p) / statistics.median(d) - 1,
                    "overhead_per_round": [b / a - 1 for a, b in zip(d, p, strict=True)],
                    "overhead_median_of_rounds": statistics.median(b / a - 1 for a, b in zip(d, p, strict=True))}
    return out


def timed(fn, *args, **kw):
    t0 = time.perf_counter()
    value = fn(*args, **kw)
    return value, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--questions", type=int, default=4, help="first N demo questions")
    ap.add_argument("--generator", default="smollm2-135m-instruct")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("-k", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--batch-docs", type=int, default=256, help="index batches for the overhead part (demo default)")
    ap.add_argument("--dask-batch-docs", type=int, default=64, help="index batches for the Dask part")
    ap.add_argument("--dask-workers", type=int, nargs="*", default=[1, 2], help="nothing: skip the Dask part")
    ap.add_argument("--no-overhead", action="store_true", help="skip the Prefect-vs-direct part")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    from flows.runners import prefect_api
    from tasks.config import DEFAULT_EMBEDDER
    from tasks.demo.corpus import DEMO_QUESTIONS, build_demo_corpus
    from tasks.generation.generate import load_generator
    from tasks.indexing.embed import load_embedder, resolve_embedder

    info = {"machine": machine(), "settings": vars(a) | {"json": str(a.json)}}
    docs = str(build_demo_corpus())
    work = Path(tempfile.mkdtemp(prefix="ragbatch-orch-"))
    qfile = work / "questions.jsonl"
    qfile.write_text("".join(DEMO_QUESTIONS.read_text().splitlines(keepends=True)[: a.questions]))
    print(f"machine: {info['machine']}", flush=True)

    t0 = time.perf_counter()
    load_embedder(resolve_embedder(DEFAULT_EMBEDDER), "cpu")
    load_generator(a.generator, None)
    info["model_load_s"] = time.perf_counter() - t0
    n = 0

    def fresh(tag: str) -> tuple[str, str]:
        nonlocal n
        n += 1
        return str(work / f"store-{tag}-{n}"), str(work / f"out-{tag}-{n}.parquet")

    # A warm-up of both paths (first-call imports, the tokenizer, Prefect's client), not timed.
    t0 = time.perf_counter()
    with prefect_api():  # a local Prefect server for this process, started before any timing
        info["server_start_s"] = time.perf_counter() - t0
        store, out = fresh("warm")
        direct_index(docs, store, a.batch_docs)
        direct_answer(str(qfile), store, out, a.generator, a.k, a.max_new_tokens)
        store, out = fresh("warm")
        prefect_index(docs, store, a.batch_docs)
        prefect_answer(str(qfile), store, out, a.generator, a.k, a.max_new_tokens)

        runs = []
        for r in range(0 if a.no_overhead else a.rounds):
            order = ("direct", "prefect") if r % 2 == 0 else ("prefect", "direct")
            for mode in order:
                store, out = fresh(mode)
                if mode == "direct":
                    chunks, t_index = timed(direct_index, docs, store, a.batch_docs)
                    answered, t_answer = timed(direct_answer, str(qfile), store, out, a.generator, a.k,
                                               a.max_new_tokens)
                else:
                    chunks, t_index = timed(prefect_index, docs, store, a.batch_docs)
                    answered, t_answer = timed(prefect_answer, str(qfile), store, out, a.generator, a.k,
                                               a.max_new_tokens)
                runs.append({"round": r, "mode": mode, "index_s": t_index, "answer_s": t_answer, "chunks": chunks,
                             "questions": answered})
                print(f"round {r} {mode:8s} index {t_index:6.1f}s ({chunks} chunks)  answer {t_answer:6.1f}s "
                      f"({answered} questions)", flush=True)
                shutil.rmtree(store, ignore_errors=True)
        info["runs"] = runs

        if runs:
            info["overhead"] = overhead(runs)
            print(json.dumps(info["overhead"], indent=1), flush=True)

        # Dask: index throughput with 1 and 2 local workers, next to the thread runner (same batches).
        from storage.store import open_store

        dask = []
        for kind, workers in [("threads", 0)] + [("dask", w) for w in a.dask_workers]:
            store, _ = fresh(f"{kind}{workers}")
            kw = {"runner": "dask", "dask_workers": workers} if kind == "dask" else {}
            try:
                chunks, secs = timed(prefect_index, docs, store, a.dask_batch_docs, **kw)
                problems = open_store(store).verify().problems
                err = None
            except Exception as exc:  # noqa: BLE001 - recorded, the benchmark goes on
                chunks, secs, problems, err = 0, float("nan"), [], f"{type(exc).__name__}: {exc}"
            row = {"runner": kind, "workers": workers or None, "seconds": secs, "chunks": chunks,
                   "chunks_per_s": chunks / secs if chunks else 0.0, "store_problems": problems[:5], "error": err}
            dask.append(row)
            print(f"{kind} workers={workers or '-'}: {secs:.1f}s, {chunks} chunks, "
                  f"{row['chunks_per_s']:.1f} chunks/s, store problems {len(problems)} {err or ''}", flush=True)
            shutil.rmtree(store, ignore_errors=True)
        info["dask"] = dask
    info["load_avg_at_end"] = os.getloadavg()
    try:
        info["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                     text=True).stdout.strip()
    except OSError:
        pass
    shutil.rmtree(work, ignore_errors=True)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(info, indent=1, default=str))
        print(f"→ {a.json}")


if __name__ == "__main__":
    main()
