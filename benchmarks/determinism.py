"""What batch invariance costs, and what it is worth, on this CPU (issue 19).

For the generator (Qwen-0.5B by default) and the embedder (all-MiniLM-L6-v2), in the dtype ``auto`` picks here,
the same work runs through

- **plain**: torch's own linear kernels (the path before issue 19: rows may round differently by batch);
- **tiled**: every linear layer in fixed row tiles (``tasks/invariant.py``), for a few tile sizes, with the
  generator's weights packed for oneDNN where ``load_generator`` packs them (bfloat16), as ``generate`` runs;

and prints, as ratios against plain measured in the same run:

- prefill: one forward pass over the batched prompts (the prefill a ``generate`` call does), seconds;
- decode: a whole greedy generation of the same prompts, seconds;
- embedding: passages per second;
- the **flip rate**: of N answers (token ids), how many differ between two batch plans (16 rows a call vs 3),
  and embeddings' largest difference between two batch plans, for plain and tiled.

    python benchmarks/determinism.py [--model qwen2.5-0.5b] [--questions 12] [--tiles 128:16 256:16 512:16]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.generate import workload  # noqa: E402
from tasks.device import cpu_flags, dtype_name  # noqa: E402
from tasks.generation.generate import Generator, build_messages, load_generator  # noqa: E402
from tasks.indexing.embed import load_embedder, resolve_embedder  # noqa: E402
from tasks.invariant import DECODE_TILE, EMBED_TILE, PREFILL_TILE, TiledLinear, make_batch_invariant  # noqa: E402


def cpu_kind() -> str:
    flags = cpu_flags()
    kind = "Intel AMX" if "amx_bf16" in flags else "avx512_bf16 (e.g. AMD Zen 4)" if "avx512_bf16" in flags else "other"
    return f"{kind}: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def set_tiles(model: torch.nn.Module, tiles: tuple[int, int] | None) -> None:
    """``None``: plain ``nn.Linear``; else (prefill tile, decode tile)."""
    if tiles is None:
        for m in model.modules():
            if isinstance(m, TiledLinear):
                m.__class__ = torch.nn.Linear
    else:
        make_batch_invariant(model, *tiles)


def prefill_seconds(gen: Generator, ids: list[list[int]], batch: int, repeats: int) -> float:
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats):
            t0 = time.perf_counter()
            for i in range(0, len(ids), batch):
                input_ids, mask = gen.left_padded(ids[i : i + batch])
                gen.model(input_ids=input_ids, attention_mask=mask, logits_to_keep=1)
            best = min(best, time.perf_counter() - t0)
    return best


def generate(gen: Generator, ids: list[list[int]], batch: int, max_new: int) -> tuple[float, list[list[int]]]:
    t0 = time.perf_counter()
    out = gen.generate_ids(ids, max_new_tokens=max_new, batch_size=batch, progress=False)
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--questions", type=int, default=12, help="each gives two prompts (with and without passages)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--tiles", nargs="+", default=["128:16", "256:16", "512:16", "256:32"],
                    help="prefill:decode tile sizes to try")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--embed-tiles", nargs="+", type=int, default=[256, 512, 1024])
    ap.add_argument("--skip-embed", action="store_true")
    ap.add_argument("--skip-generate", action="store_true")
    args = ap.parse_args(argv)
    print(f"CPU: {cpu_kind()}; torch {torch.__version__}")

    if not args.skip_generate:
        generation(args)
    if not args.skip_embed:
        embedding(args)


def generation(args: argparse.Namespace) -> None:
    gen = load_generator(args.model, device="cpu", dtype=args.dtype)
    questions, contexts = workload(args.questions)
    convs = [build_messages(q, None) for q in questions] + [build_messages(q, c) for q, c in
                                                            zip(questions, contexts, strict=True)]
    ids = gen.encode(convs)
    print(f"generator {gen.name} {gen.dtype}: {len(ids)} prompts, {sum(map(len, ids))} prompt tokens")
    configs: list[tuple[str, tuple[int, int] | None]] = [("plain", None)]
    configs += [(f"tiled {t}", (int(t.split(':')[0]), int(t.split(':')[1]))) for t in args.tiles]
    print("| path | prefill s | × plain | generate s (16/call) | × plain | answers that differ, 16 vs 3 per call |")
    print("|---|---|---|---|---|---|")
    base_p = base_g = 0.0
    for name, tiles in configs:
        set_tiles(gen.model, tiles)
        p = prefill_seconds(gen, ids, 16, args.repeats)
        g, a = generate(gen, ids, 16, args.max_new_tokens)
        _, b = generate(gen, ids, 3, args.max_new_tokens)
        flips = sum(x != y for x, y in zip(a, b, strict=True))
        if tiles is None:
            base_p, base_g = p, g
        print(f"| {name} | {p:.2f} | {p / base_p:.2f} | {g:.2f} | {g / base_g:.2f} | {flips} of {len(ids)} |",
              flush=True)
    set_tiles(gen.model, (PREFILL_TILE, DECODE_TILE))


def embedding(args: argparse.Namespace) -> None:
    emb = load_embedder(resolve_embedder("all-MiniLM-L6-v2"), device="cpu", dtype=args.dtype)
    _, contexts = workload(args.questions)
    texts = [c[1] * (1 + i % 4) for i, c in enumerate(x for ctx in contexts * 40 for x in ctx)][:800]
    print(f"\nembedder all-MiniLM-L6-v2 {dtype_name(emb.dtype)}: {len(texts)} passages")
    print("| path | passages/s | × plain | largest difference, 256 vs 17 passages per call |")
    print("|---|---|---|---|")
    base = 0.0
    configs = [("plain", None)] + [(f"tiled {t}", (t, DECODE_TILE)) for t in args.embed_tiles]
    for name, tiles in configs:
        set_tiles(emb.model, tiles)
        emb.embed_passages(texts[:32])
        seconds = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            a = emb.embed_passages(texts)
            seconds = min(seconds, time.perf_counter() - t0)
        rate = len(texts) / seconds
        b = torch.cat([emb.embed_passages(texts[i : i + 17]) for i in range(0, len(texts), 17)])
        base = base or rate
        print(f"| {name} | {rate:.1f} | {rate / base:.2f} | {float((a - b).abs().max()):.2e} |", flush=True)
    set_tiles(emb.model, (EMBED_TILE, DECODE_TILE))


if __name__ == "__main__":
    main()
