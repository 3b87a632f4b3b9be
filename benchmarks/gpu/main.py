"""GPU readiness (issue 9, item 6): every GPU measurement of ragbatch, with random-weight models of the real shapes.

Run it through ``benchmarks/gpu.sh`` (which gives each part its own time cap and keeps going when one fails);
each part is one subcommand here and writes ``RESULTS/<part>.json`` after every finished measurement, so a part
killed at its cap keeps what it had measured:

    python benchmarks/gpu/main.py env      --results DIR           # versions, device, peak and copy bandwidth
    python benchmarks/gpu/main.py embed    --results DIR --budget S  # Embedder fp16 vs sentence-transformers fp16
    python benchmarks/gpu/main.py search   --results DIR --budget S  # exact dense search at 1M and 10M x 384, GB/s
    python benchmarks/gpu/main.py generate --results DIR --budget S  # batched generate_ids vs HF generate per prompt
    python benchmarks/gpu/main.py report   --results DIR             # the summary table, gpu.json and gpu.md

``--smoke`` uses tiny sizes so the whole thing runs on a CPU in seconds (it checks the code paths, not speed).
Speed does not depend on the weights, so models are built from their configurations with random weights: no model
hub, no network, nothing large travels. Tokenizers: a WordPiece tokenizer over a synthetic 30,522-entry vocabulary
(BERT's size and special-token ids) for the embedders, so every word is one token and passage lengths are exact;
generation prompts are random token ids of realistic lengths (no tokenizer needed). With random weights only the
shapes and the token counts matter, so the real MiniLM tokenizer (a 466 KB tokenizer.json) need not travel.

The parts live in ``env.py``, ``embed.py``, ``search.py``, ``generate.py`` and ``report.py``
next to this file, their shared plumbing (budget clock, results files, timing, device facts) in ``common.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import PARTS  # first: starts the budget clock, puts the repository root on sys.path
from embed import cmd_embed
from env import cmd_env
from generate import cmd_generate
from report import cmd_report
from search import cmd_search


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("part", choices=("env", *PARTS, "report"))
    ap.add_argument("--results", type=Path, required=True, help="folder for <part>.json (and gpu.json, gpu.md)")
    ap.add_argument("--budget", type=float, default=120.0, help="seconds this part may take, imports included")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes; runs on a CPU in seconds")
    ap.add_argument("--n", type=int, help="embed: passages (default 20000; smoke 48)")
    ap.add_argument("--questions", type=int, help="generate: questions, two prompts each (default 64; smoke 4)")
    ap.add_argument("--max-new-tokens", type=int, help="generate: new tokens per prompt (default 48; smoke 4)")
    ap.add_argument("--status", nargs="*", help="report: PART=EXIT_CODE of each part, from gpu.sh")
    args = ap.parse_args(argv)
    args.results.mkdir(parents=True, exist_ok=True)
    if args.part in PARTS:
        import torch

        if args.smoke and not torch.cuda.is_available():
            torch.set_num_threads(1)  # a smoke run must not load a shared CPU
    return {"env": cmd_env, "embed": cmd_embed, "search": cmd_search, "generate": cmd_generate,
            "report": cmd_report}[args.part](args)


if __name__ == "__main__":
    sys.exit(main())
