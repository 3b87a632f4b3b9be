"""Prompt tuning on SQuAD-dev: every template of ``tasks/generation/prompts.toml``, with and without snapping, measured.

The tuning sample is drawn from the SQuAD-dev questions that are **not** in the reported sample (``eval squad
--sample 300 --seed 0``), so the prompt is never chosen on the questions it is reported on. Retrieval runs once
(hybrid top-k, the project's own ``search``); each template then answers the same questions with the same
passages through the project's own batched generation. Snapping (``tasks/generation/snap.py``) is scored on the same
outputs, so it costs no extra generation.

    python benchmarks/prompts.py --store STORE --generator qwen2.5-0.5b --questions 40
    python benchmarks/prompts.py --store STORE --prompts extract one-shot --no-rag   # also the no-RAG arm
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage.paths import configure_environment  # noqa: E402

configure_environment()

from tasks.evaluation.datasets import load_eval_dataset  # noqa: E402
from tasks.evaluation.metrics import contains_gold, exact_match, token_f1  # noqa: E402
from tasks.generation.cite import split_citations  # noqa: E402
from tasks.generation.generate import load_generator  # noqa: E402
from tasks.generation.prompts import load_prompts  # noqa: E402
from tasks.generation.snap import snap_answer  # noqa: E402
from tasks.retrieval.search import search  # noqa: E402
from tasks.text import support  # noqa: E402


def tuning_sample(n: int, seed: int, report_sample: int = 300, report_seed: int = 0):
    """``n`` SQuAD-dev questions drawn with ``seed`` from those outside the reported sample."""
    ds = load_eval_dataset("squad")
    reported = {q.id for q in random.Random(report_seed).sample(ds.questions, report_sample)}
    rest = [q for q in ds.questions if q.id not in reported]
    return sorted(random.Random(seed).sample(rest, n), key=lambda q: q.id), len(reported)


def score(answers: list[str], golds: list[list[str]], contexts: list[str]) -> dict[str, float]:
    n = len(answers)
    return {
        "EM": sum(exact_match(a, g) for a, g in zip(answers, golds, strict=True)) / n,
        "F1": sum(token_f1(a, g) for a, g in zip(answers, golds, strict=True)) / n,
        "contains": sum(contains_gold(a, g) for a, g in zip(answers, golds, strict=True)) / n,
        "faithfulness": sum(support(a, c) for a, c in zip(answers, contexts, strict=True)) / n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True, help="a store indexed from SQuAD-dev (ragbatch eval squad ...)")
    ap.add_argument("--generator", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--prompts", nargs="*", help="template names (default: all in tasks/generation/prompts.toml)")
    ap.add_argument("--questions", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--no-rag", action="store_true", help="also answer without passages (the baseline arm)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()

    qs, n_reported = tuning_sample(args.questions, args.seed)
    texts, golds = [q.question for q in qs], [list(q.answers) for q in qs]
    t0 = time.perf_counter()
    hits, _ = search(args.store, texts, k=args.k, retriever="hybrid")
    print(f"{len(qs)} tuning questions (seed {args.seed}, disjoint from the {n_reported} reported), "
          f"hybrid top-{args.k} in {time.perf_counter() - t0:.1f}s", flush=True)
    gen = load_generator(args.generator, None, args.dtype)
    _, templates = load_prompts()
    names = args.prompts or list(templates)
    rows = []
    for name in names:
        t = templates[name]
        convs = [t.messages(q, list(zip(h.doc_ids, h.texts, strict=True))) for q, h in zip(texts, hits, strict=True)]
        if args.no_rag:
            convs += [t.messages(q, None) for q in texts]
        t1 = time.perf_counter()
        out = gen.generate(convs, max_new_tokens=args.max_new_tokens, progress=False)
        secs = time.perf_counter() - t1
        raw = [split_citations(a, args.k)[0] for a in out[: len(qs)]]  # citation marks are not answer text
        cited = sum(bool(split_citations(a, args.k)[1]) for a in out[: len(qs)])
        ctx = ["\n".join(h.texts) for h in hits]
        snapped = [snap_answer(a, q, h.texts) for a, q, h in zip(raw, texts, hits, strict=True)]
        row = {"prompt": name, "seconds": round(secs, 1), "padding_ratio": round(gen.last_stats.padding_ratio, 3),
               "raw": score(raw, golds, ctx), "snapped": score(snapped, golds, ctx),
               "changed_by_snap": sum(a != b for a, b in zip(raw, snapped, strict=True)),
               "cited": cited}
        if args.no_rag:
            row["no_rag"] = score(out[len(qs):], golds, ctx)
        rows.append(row)
        r, s = row["raw"], row["snapped"]
        print(f"{name:16} RAG EM {r['EM']:.3f} F1 {r['F1']:.3f} faith {r['faithfulness']:.3f} | snapped EM "
              f"{s['EM']:.3f} F1 {s['F1']:.3f} faith {s['faithfulness']:.3f} ({row['changed_by_snap']} changed)"
              + (f" | no-RAG EM {row['no_rag']['EM']:.3f}" if args.no_rag else "")
              + f" | {cited} cite a passage | {secs:.0f}s, pad {row['padding_ratio']:.2f}", flush=True)
    print("\n| prompt | RAG EM | RAG F1 | faithfulness | snapped EM | snapped F1 | snapped faithfulness | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        r, s = row["raw"], row["snapped"]
        print(f"| {row['prompt']} | {r['EM']:.3f} | {r['F1']:.3f} | {r['faithfulness']:.3f} | {s['EM']:.3f} | "
              f"{s['F1']:.3f} | {s['faithfulness']:.3f} | {row['seconds']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "generator":
                                         args.generator, "dtype": gen.dtype, "questions": len(qs), "seed": args.seed,
                                         "k": args.k, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
