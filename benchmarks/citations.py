"""Benchmark: citation precision and recall, before and after issue 24, on the same answers in one run.

    python benchmarks/citations.py                       # the 12 demo questions and 120 generated ones, CPU
    python benchmarks/citations.py --generated 40 --no-write

One answer run per question set with the default settings (what `ragbatch demo` does), then every answer's
citations judged two ways:
- **before**: the rule up to issue 24: without marks from the model, cite every passage holding at least half of
  the answer's content tokens under SQuAD normalisation ("1.5" read as "15"); the model's marks kept unchecked;
- **after**: the rule now (tasks/generation/cite.py): cite a passage only when it holds every phrase the answer
  claims, numbers whole; a mark on a passage that does not is flagged unsupported and not counted as a citation.

Measures (the same judge for both rules: a gold answer found in the passage as consecutive words, numbers whole):
- precision: cited passages that contain a gold answer, over cited passages;
- recall: questions answered correctly (EM, or a gold answer inside the answer: SQuAD's rules) that cite a passage
  containing a gold answer, over questions answered correctly;
- faithfulness: the mean share of the RAG answer's content tokens found in its passages, under each
  normalisation (the measure changes with the rule, so both are shown).

Question sets: the demo's 12 (gold answers in data/demo_questions.jsonl), and questions generated from the demo
corpus, "Who created {model}?" and "How many parameters does {model} have?", with the gold answer taken from the
model's own passage (its "It has N parameters" sentence). Nothing here was tuned: the rule has no threshold.
Writes "## Citations (issue 24)" in benchmarks/RESULTS.md unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from storage.paths import configure_environment  # noqa: E402

configure_environment()

from incremental import machine, write_results  # noqa: E402

HEADING = "## Citations (issue 24)"


def generated_questions(path: Path, n: int) -> None:
    from tasks.demo.corpus import build_demo_corpus

    docs = [json.loads(x) for x in (build_demo_corpus() / "helm_models.jsonl").read_text().splitlines() if x]
    rows = []
    for d in docs:
        m = re.search(r"It has ([\d.,]+ (?:million|billion|trillion)) parameters", d["text"])
        if len(rows) % 2 == 0 and d.get("creator"):
            rows.append({"id": f"g{len(rows):03d}", "question": f"Who created {d['title']}?",
                         "answers": [d["creator"]]})
        elif len(rows) % 2 == 1 and m:
            rows.append({"id": f"g{len(rows):03d}", "question": f"How many parameters does {d['title']} have?",
                         "answers": [m.group(1)]})
    step = max(1, len(rows) // n)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[::step][:n]))


def old_support(answer: str, passage: str) -> float:
    """The support measure before issue 24: SQuAD-normalised content tokens, at least half of them in the passage."""
    from tasks.text import STOPWORDS, normalize_answer

    toks = [t for t in normalize_answer(answer).split() if t not in STOPWORDS]
    if not toks:
        return 1.0
    ctx = set(normalize_answer(passage).split())
    return sum(t in ctx for t in toks) / len(toks)


def judge(rows: list[dict]) -> dict[str, dict[str, float]]:
    from tasks.evaluation.metrics import contains_gold, exact_match
    from tasks.generation.cite import split_citations
    from tasks.reporting.marks import gold_spans
    from tasks.text import support

    out = {}
    for rule in ("before", "after"):
        cited = with_gold = correct = correct_cited = unsupported = 0
        faith = 0.0
        for r in rows:
            texts, golds, answer = r["chunk_texts"], r["gold_answers"], r["rag_answer"]
            if rule == "before":
                _, marks = split_citations(r["rag_raw"] or "", len(texts))
                picks = marks or [i + 1 for i, t in enumerate(texts)
                                  if answer.strip() and old_support(answer, t) >= 0.5]
                faith += old_support(answer, "\n".join(texts))
            else:
                picks = [c["passage"] for c in r["citations"] if c["supported"]]
                unsupported += sum(not c["supported"] for c in r["citations"])
                faith += support(answer, "\n".join(texts))
            has = [bool(gold_spans(golds, texts[p - 1])) for p in picks]
            cited += len(picks)
            with_gold += sum(has)
            ok = bool(exact_match(answer, golds) or contains_gold(answer, golds))
            correct += ok
            correct_cited += ok and any(has)
        out[rule] = {"precision": with_gold / cited if cited else float("nan"), "cited": cited,
                     "recall": correct_cited / correct if correct else float("nan"), "correct": correct,
                     "faithfulness": faith / len(rows), "unsupported_marks": unsupported}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generated", type=int, default=120, help="generated questions")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ragbatch-citations-"))

    import pyarrow.parquet as pq

    from flows.answer import run_answer
    from flows.index import run_index
    from flows.runners import prefect_api
    from tasks.demo.corpus import DEMO_QUESTIONS, build_demo_corpus

    generated_questions(work / "generated.jsonl", args.generated)
    results = {}
    with prefect_api():
        run_index(build_demo_corpus(), work / "store")
        for name, qfile in (("demo", DEMO_QUESTIONS), ("generated", work / "generated.jsonl")):
            t0 = time.perf_counter()
            rep = run_answer(qfile, work / "store", work / f"{name}.parquet")
            rows = pq.read_table(work / f"{name}.parquet").to_pylist()
            results[name] = (len(rows), judge(rows), time.perf_counter() - t0)
            print(name, rep.questions, json.dumps(results[name][1]), flush=True)
    lines = ["| questions | rule | citations | precision | correct answers | recall | faithfulness | marks flagged |",
             "|---|---|---|---|---|---|---|---|"]
    for name, (n, j, _) in results.items():
        for rule in ("before", "after"):
            m = j[rule]
            lines.append(f"| {name} ({n}) | {rule} | {m['cited']} | {m['precision']:.3f} | {m['correct']} | "
                         f"{m['recall']:.3f} | {m['faithfulness']:.3f} | "
                         f"{m['unsupported_marks'] if rule == 'after' else '–'} |")
    section = f"""{HEADING}

`python {' '.join(['benchmarks/citations.py', *sys.argv[1:]])}` on {machine()}: the demo corpus (622
documents), default settings (hybrid top-5, the default generator and prompt). The same answers judged by the rule
before issue 24 and by the rule now (benchmarks/citations.py explains both and the measures).

{chr(10).join(lines)}
"""
    print(section)
    if not args.no_write:
        write_results(section, HEADING)


if __name__ == "__main__":
    main()
