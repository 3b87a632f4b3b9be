"""Same behaviour before and after a change that should not change it (a refactor): run, then compare.

``python scripts/behaviour.py snapshot DIR`` runs, through the CLI only (the entry point that survives a
re-layout), the demo (index the demo corpus, answer the demo questions with the default settings) and an eval of
100 questions with gold answers built from the demo corpus (``--generator qwen2.5-0.5b``, so it takes minutes).
``python scripts/behaviour.py compare BEFORE AFTER`` compares every Parquet table of the two snapshots, all
columns but timings and the snapshot's own paths, and exits 1 on any difference. Run both on the same machine,
in the same dtype: answers are exact per CPU kind and thread count, not across them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
HOME = Path(os.environ.get("RAGBATCH_HOME", ROOT / ".ragbatch"))
CORPUS = HOME / "demo" / "corpus"
TIMING = ("retrieve_s", "generate_s", "seconds", "created_at")


def cli(*args: str) -> None:
    print("ragbatch", *args, flush=True)
    subprocess.run([sys.executable, "-m", "ragbatch.cli", *args], cwd=ROOT, check=True)


def eval_questions(path: Path, n: int = 100) -> None:
    """``n`` questions with gold answers and evidence, from evenly spaced documents of the demo corpus."""
    docs = [json.loads(line) for line in (CORPUS / "helm_models.jsonl").read_text().splitlines() if line.strip()]
    asks = [("Who created {title}?", "creator"), ("When was {title} released?", "release_date")]
    rows = []
    for i, doc in enumerate(docs[:: max(1, len(docs) // n)][:n]):
        template, field = asks[i % 2]
        rows.append({"id": f"e{i:03d}", "question": template.format(title=doc["title"]),
                     "answers": [str(doc[field])], "evidence_doc_ids": [doc["id"]]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def snapshot(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cli("index", str(CORPUS), "--store", str(out / "demo-store"))
    questions = out / "demo_questions.jsonl"  # in the snapshot: the table records its path
    questions.write_bytes((ROOT / "data" / "demo_questions.jsonl").read_bytes())
    cli("answer", str(questions), "--store", str(out / "demo-store"), "--out", str(out / "demo.parquet"))
    eval_questions(out / "eval100.jsonl")
    cli("eval", str(out / "eval100.jsonl"), "--corpus", str(CORPUS), "--store", str(out / "eval-store"),
        "--out", str(out / "eval"), "--generator", "qwen2.5-0.5b")


def comparable(df: pl.DataFrame, root: Path) -> pl.DataFrame:
    df = df.drop([c for c in df.columns if c in TIMING])
    strings = [c for c, t in df.schema.items() if t == pl.String]
    return df.with_columns(pl.col(c).str.replace_all(str(root), "<SNAPSHOT>", literal=True) for c in strings)


def compare(before: Path, after: Path) -> int:
    failed = 0
    found = (p.relative_to(before) for p in before.rglob("*.parquet"))
    tables = sorted(rel for rel in found if not any(part.endswith("store") for part in rel.parts))
    print("| table | rows | columns compared | same |\n|---|---|---|---|")
    for rel in tables:
        a, b = comparable(pl.read_parquet(before / rel), before), comparable(pl.read_parquet(after / rel), after)
        same = a.columns == b.columns and a.equals(b)
        failed += not same
        print(f"| {rel} | {a.height} | {len(a.columns)} | {'yes' if same else '**NO**'} |")
        if not same:
            for c in a.columns:
                if c not in b.columns or not a[c].equals(b[c]):
                    print(f"  differs: {c}")
    return 1 if failed or not tables else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["snapshot"]:
        snapshot(Path(sys.argv[2]).resolve())
    elif sys.argv[1:2] == ["compare"]:
        sys.exit(compare(Path(sys.argv[2]).resolve(), Path(sys.argv[3]).resolve()))
    else:
        sys.exit(__doc__)
