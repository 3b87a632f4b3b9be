"""``benchmarks/generate.py --paths``: the old generation path, the default one and llama.cpp, same prompts.

Each path answers the same rendered chat prompts (both arms of every question) greedily with the same
``max_new_tokens``. Reported per workload and path: seconds, prompt tokens per second, padded / real prompt
tokens, and how many answers equal the old path's (and, for the default dtype one prompt at a time, how many
equal the batched default: batching must not change answers); then the ratios the issue asks for (default vs
old, default vs llama.cpp). ``cpu_per_wall`` near the thread count means the cores were ours for that pass.
"""

from __future__ import annotations

import json
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from flows.index import run_index
from storage.paths import demo_dir
from tasks.demo.corpus import DEMO_QUESTIONS, build_demo_corpus
from tasks.device import cpu_has_native_bf16, default_device
from tasks.generation.generate import load_generator
from tasks.generation.prompts import get_prompt
from tasks.ingest.questions import load_questions
from tasks.models.prepare import packaged_generator, packaged_gguf
from tasks.retrieval.search import search

OLD = {"dtype": "float32", "batch_size": 16, "token_budget": 10**9, "max_pad_ratio": float("inf")}
NEW = {"dtype": "auto"}


def workloads(squad_store: str | None, squad_questions: int) -> dict[str, list[list[dict]]]:
    """Chat conversations (no-RAG then RAG arm of each question) of the demo and of the SQuAD tuning sample."""
    template = get_prompt()
    out: dict[str, list[list[dict]]] = {}
    store = demo_dir() / "store"
    if not (store / "index.json").is_file():
        run_index(build_demo_corpus(), store)
    demo = [q.question for q in load_questions([DEMO_QUESTIONS]).questions]
    sets = [("demo", str(store), demo)]
    if squad_store:
        from prompts import tuning_sample  # benchmarks/prompts.py: the sample disjoint from the reported one

        qs, _ = tuning_sample(squad_questions, 1)
        sets.append((f"squad-{squad_questions}", squad_store, [q.question for q in qs]))
    for name, st, questions in sets:
        hits, _ = search(st, questions, k=5, retriever="hybrid")
        out[name] = [template.messages(q, None) for q in questions] + [
            template.messages(q, list(zip(h.doc_ids, h.texts, strict=True))) for q, h in zip(questions, hits,
                                                                                              strict=True)]
    return out


def run_torch(model: str, convs: list[list[dict]], max_new: int, **kw) -> tuple[dict, list[str]]:
    gen_kw = {k: v for k, v in kw.items() if k != "dtype"}
    gen = load_generator(model, default_device(), kw["dtype"])
    gen.generate(convs[:2], max_new_tokens=2, progress=False)  # warm-up
    cpu0, t0 = time.process_time(), time.perf_counter()
    answers = gen.generate(convs, max_new_tokens=max_new, progress=False, **gen_kw)
    secs = time.perf_counter() - t0
    st = gen.last_stats
    return {"dtype": gen.dtype, "seconds": round(secs, 1), "prompt_tokens": st.prompt_tokens,
            "padding_ratio": round(st.padding_ratio, 3), "batches": st.batches, "new_tokens": st.new_tokens,
            "cpu_per_wall": round((time.process_time() - cpu0) / secs, 2)}, answers


def run_llamacpp(model: str, convs: list[list[dict]], max_new: int, slots: int) -> tuple[dict, list[str]]:
    """The same prompt texts through llama.cpp's server loop (in process), ``slots`` requests in flight."""
    import xllamacpp

    gen = load_generator(model, default_device(), "auto")  # only for the chat template and token counts
    texts = [gen.render(c) for c in convs]
    longest = max(len(x) for x in gen.encode(convs))
    p = xllamacpp.CommonParams()
    p.model.path = str(packaged_gguf(model))
    p.n_parallel = slots
    p.n_ctx = slots * (longest + max_new + 16)  # every slot fits the longest prompt
    p.cpuparams.n_threads = p.cpuparams_batch.n_threads = torch.get_num_threads()
    server = xllamacpp.Server(p)
    req = {"max_tokens": max_new, "temperature": 0, "top_k": 1, "cache_prompt": False}
    server.handle_completions({**req, "prompt": texts[0], "max_tokens": 2})  # warm-up
    cpu0, t0 = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(slots) as pool:
        results = list(pool.map(lambda t: server.handle_completions({**req, "prompt": t}), texts))
    secs = time.perf_counter() - t0
    answers = [r["choices"][0]["text"].strip() for r in results]
    usage = [r.get("usage", {}) for r in results]
    return {"dtype": "Q4_K_M", "seconds": round(secs, 1),
            "prompt_tokens": sum(u.get("prompt_tokens", 0) for u in usage), "padding_ratio": 1.0,
            "batches": None, "new_tokens": sum(u.get("completion_tokens", 0) for u in usage),
            "cpu_per_wall": round((time.process_time() - cpu0) / secs, 2)}, answers


def paths_main(args) -> None:
    model = packaged_generator(args.model).name if packaged_generator(args.model) else args.model
    print(f"{model}; {platform.processor() or platform.machine()}, native bf16 {cpu_has_native_bf16()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; max new tokens {args.max_new_tokens}",
          flush=True)
    results: dict[str, dict] = {}
    for name, convs in workloads(args.squad_store, args.squad_questions).items():
        rows: dict[str, dict] = {}
        old, old_answers = run_torch(model, convs, args.max_new_tokens, **OLD)
        rows["old: float32, fixed batches"] = old
        new, new_answers = run_torch(model, convs, args.max_new_tokens, **NEW)
        new["same_answers_as_old"] = sum(a == b for a, b in zip(new_answers, old_answers, strict=True))
        rows["default: auto dtype, token budget"] = new
        one, one_answers = run_torch(model, convs, args.max_new_tokens, dtype="auto", batch_size=1)
        one["same_answers_as_old"] = sum(a == b for a, b in zip(one_answers, old_answers, strict=True))
        one["same_as_default"] = sum(a == b for a, b in zip(one_answers, new_answers, strict=True))
        rows["default dtype, one prompt at a time"] = one
        if not args.skip_llamacpp:
            ll, ll_answers = run_llamacpp(model, convs, args.max_new_tokens, args.llamacpp_slots)
            ll["same_answers_as_old"] = sum(a == b for a, b in zip(ll_answers, old_answers, strict=True))
            rows[f"llama.cpp Q4_K_M, {args.llamacpp_slots} slots"] = ll
        results[name] = {"prompts": len(convs), "paths": rows}
        print(f"\n{name}: {len(convs)} prompts ({len(convs) // 2} questions x with/without)")
        print(f"{'path':36s} {'dtype':9s} {'seconds':>8s} {'prompt tok/s':>12s} {'pad':>5s} {'same':>5s} "
              f"{'cpu/wall':>8s}")
        for path, r in rows.items():
            same = r.get("same_answers_as_old", len(convs))
            print(f"{path:36s} {r['dtype']:9s} {r['seconds']:8.1f} {r['prompt_tokens'] / r['seconds']:12.1f} "
                  f"{r['padding_ratio']:5.2f} {same:5d} {r['cpu_per_wall']:8.2f}")
        ratios = {"default vs old": old["seconds"] / new["seconds"]}
        if not args.skip_llamacpp:
            ratios["default vs llama.cpp"] = ll["seconds"] / new["seconds"]
        results[name]["speedup"] = {k: round(v, 2) for k, v in ratios.items()}
        print(f"  batched vs one at a time in {new['dtype']}: {one['same_as_default']}/{len(convs)} answers identical")
        print("  " + ", ".join(f"{k}: {v:.2f}x faster" for k, v in ratios.items()), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": model, "machine": platform.processor(),
                                               "results": results}, indent=2) + "\n")
