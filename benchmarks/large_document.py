"""Peak memory and time of chunking (and optionally indexing) one huge text document (issue 10, finding 6).

Each measurement runs in a fresh subprocess so its peak RSS (``ru_maxrss``) is its own. ``--tree`` runs the
same step with another checkout's code (e.g. a ``git worktree`` of the commit before windowed chunking), which
is the peer here: the same chunker tokenizing the whole text at once.

    python benchmarks/large_document.py --mb 5 20 50 [--tree /tmp/old] [--index-mb 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHUNK = """
import json, resource, sys, time
from tasks.ingest.chunk import ChunkSettings, chunk_text
from tasks.indexing.embed import load_embedder, resolve_embedder
cfg = resolve_embedder("all-MiniLM-L6-v2")
tok = load_embedder(cfg, "cpu").tokenizer
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
text = open(sys.argv[1]).read()
t0, c0 = time.perf_counter(), time.process_time()
chunks = chunk_text("doc", "sha", text, tok, ChunkSettings(), cfg.max_length, cfg.passage_prefix)
print(json.dumps({"chunks": len(chunks), "seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                  "base_mb": base / 1024,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

INDEX = """
import json, resource, sys, time
from flows.index import run_index
t0, c0 = time.perf_counter(), time.process_time()
r = run_index(sys.argv[1], sys.argv[2])
print(json.dumps({"chunks": r.chunks_embedded, "seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_text(mb: float, path: Path) -> None:
    """Prose-like text of random words with sentences and paragraphs, ``mb`` million characters."""
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(5000)]
    out, size, n = [], 0, int(mb * 1e6)
    while size < n:
        s = " ".join(rng.choice(words) for _ in range(rng.randint(5, 25))).capitalize() + "."
        s += "\n\n" if rng.random() < 0.1 else " "
        out.append(s)
        size += len(s)
    path.write_text("".join(out)[:n])


def measure(code: str, args: list[str], tree: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=tree, env=env, capture_output=True, text=True,
                          check=False)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, nargs="+", default=[5, 20, 50])
    ap.add_argument("--tree", type=Path, help="also run the step with this checkout's code (the peer)")
    ap.add_argument("--tree-max-mb", type=float, default=20, help="skip the peer above this size (it needs GBs)")
    ap.add_argument("--index-mb", type=float, nargs="*", default=[], help="also time a full index of these sizes")
    args = ap.parse_args()
    trees = [("windowed", ROOT)] + ([("whole text", args.tree)] if args.tree else [])
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'step':6s} {'MB':>5s} {'code':11s} {'chunks':>7s} {'seconds':>8s} {'CPU s':>7s} {'peak RSS MB':>11s}",
              flush=True)
        for step, code, sizes in (("chunk", CHUNK, args.mb), ("index", INDEX, args.index_mb)):
            for mb in sizes:
                docs = Path(tmp) / f"docs-{mb}"
                docs.mkdir(exist_ok=True)
                make_text(mb, docs / "big.txt")
                for name, tree in trees:
                    if name != "windowed" and mb > args.tree_max_mb:
                        continue
                    extra = [str(docs / "big.txt")] if step == "chunk" else [str(docs), f"{tmp}/store-{name}-{mb}"]
                    r = measure(code, extra, tree)
                    if "error" in r:
                        print(f"{step:6s} {mb:5.0f} {name:11s} error: {r['error']}", flush=True)
                        continue
                    print(f"{step:6s} {mb:5.0f} {name:11s} {r['chunks']:7d} {r['seconds']:8.1f} {r['cpu_s']:7.1f} "
                          f"{r['peak_mb']:11.0f}", flush=True)


if __name__ == "__main__":
    main()
