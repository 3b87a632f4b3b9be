"""Where prefill time goes, and how close it runs to the machine's own bf16 matmul (issue 23, item 3).

    python benchmarks/prefill.py --model qwen2.5-0.5b          # the demo's 24 prompts, as generate batches them
    python benchmarks/prefill.py --model qwen2.5-0.5b --prefill-tile 128 256 512

Where generate packs the weights for oneDNN (tasks/invariant.py ``pack_weights``), each tile is also timed with
plain ``F.linear`` per tile, alternately in the same run.

Prefill is one forward pass over each batch that ``Generator.generate_ids`` would run (the same
``plan_batches``, left padding, row-wise attention and fixed-tile linears: tasks/invariant.py), with
``logits_to_keep=1`` as ``generate`` does. For each ``--prefill-tile`` it prints:

- the wall time of all batches' prefill (best of ``--repeats``) and the useful FLOP/s: 2 x every linear's
  weights x real prompt tokens, plus causal attention's 2 x 2 x heads x head_dim x L^2 / 2 per row and layer;
- a breakdown by forward hooks on one extra run: linear layers, the attention core (an attention module less its
  projections: rotary, SDPA, row-wise slicing), norms, the MLP's activation, and the rest (embedding, residual
  adds, masks, HF's and our Python): wall minus the others;
- the reference: a bf16 ``torch.matmul`` of every linear's shape at the batch's padded token count, timed in the
  same run, between the prefill repeats (this host's speed drifts by up to 40% within minutes, so a reference
  timed once before them made the fraction swing from 46% to 74%), as FLOP/s; prefill's useful FLOP/s as a
  fraction of it (goal >= 50% on AMX).

Every figure is for the CPU named in the first line.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage.paths import demo_dir  # noqa: E402
from tasks.device import cpu_flags, cpu_name  # noqa: E402
from tasks.generation.generate import build_messages, load_generator, plan_batches  # noqa: E402
from tasks.invariant import TiledLinear  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--prefill-tile", type=int, nargs="+", default=[TiledLinear.prefill_tile])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    gen = load_generator(args.model, "cpu")
    kind = "AMX" if "amx_bf16" in cpu_flags() else ("avx512_bf16" if "avx512_bf16" in cpu_flags() else "no bf16")
    print(f"cpu: {cpu_name()} ({kind}), {torch.get_num_threads()} threads; torch {torch.__version__}; {args.model} "
          f"{gen.dtype}; exact batching {gen.exact}")
    batches = _demo_batches(gen)
    real = sum(int(m.sum()) for _, m in batches)
    padded = sum(ids.numel() for ids, _ in batches)
    print(f"{len(batches)} batches, {real} real prompt tokens ({padded} with padding)")
    flops = _useful_flops(gen.model, batches)
    packed = {m: m.packed for m in gen.model.modules() if isinstance(m, TiledLinear)}
    # Each tile with the weights as generate runs them (oneDNN-packed where gen.packed) and, where packed, also
    # with plain F.linear per tile as before, so the packing's gain is measured in the same run.
    variants = [(tile, p) for tile in args.prefill_tile for p in ([True, False] if gen.packed else [False])]
    walls: dict[tuple[int, bool], float] = {}
    ref = 0.0
    for _ in range(args.repeats):  # the reference and the variants alternate, so all see the same machine load
        ref = max(ref, _matmul_rate(gen.model, batches, gen.model.dtype))
        for v in variants:
            _set_variant(packed, *v)
            walls[v] = min(walls.get(v, float("inf")), _prefill(gen.model, batches))
    print(f"bf16 matmul of the same shapes: {ref / 1e12:.2f} TFLOP/s (best of {args.repeats}, between prefill runs)")
    print(f"{'tile':>5} {'weights':>7} {'prefill s':>9} {'TFLOP/s':>8} {'of matmul':>9}  breakdown (share of a hooked "
          "run's wall)")
    for v in variants:
        _set_variant(packed, *v)
        wall = walls[v]
        t0 = time.perf_counter()
        parts = _breakdown(gen.model, batches)
        hooked = time.perf_counter() - t0
        parts["rest (embedding, adds, masks, Python)"] = max(0.0, hooked - sum(parts.values()))
        shares = ", ".join(f"{k} {s / hooked:.0%}" for k, s in parts.items())
        print(f"{v[0]:>5} {'packed' if v[1] else 'plain':>7} {wall:>9.2f} {flops / wall / 1e12:>8.3f} "
              f"{flops / wall / ref:>9.0%}  {shares}", flush=True)
    _set_variant(packed, TiledLinear.prefill_tile, True)


def _set_variant(packed: dict, tile: int, use_packed: bool) -> None:
    """Every tiled linear at ``tile`` rows, with its oneDNN-packed weight or (False) plain ``F.linear``."""
    for m, p in packed.items():
        m.prefill_tile = tile
        m.packed = p if use_packed else None


def _demo_batches(gen) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The demo's 12 questions, both arms, batched as generate_ids batches them."""
    rows = pq.read_table(demo_dir() / "results.parquet").to_pylist()
    convs = []
    for r in rows:
        convs.append(build_messages(r["question"], None))
        convs.append(build_messages(r["question"], list(zip(r["chunk_ids"], r["chunk_texts"], strict=True))))
    prompts = gen.encode(convs)
    return [gen.left_padded([prompts[i] for i in b]) for b in plan_batches([len(p) for p in prompts])]


@torch.inference_mode()
def _prefill(model, batches) -> float:
    t0 = time.perf_counter()
    for ids, mask in batches:
        model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1)
    return time.perf_counter() - t0


def _useful_flops(model, batches) -> float:
    cfg = model.config
    linear = sum(m.weight.numel() for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head"))
    heads, head_dim = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    total = 0.0
    for ids, mask in batches:
        lengths = mask.sum(1).double()
        total += 2 * linear * float(lengths.sum()) + 2 * cfg.vocab_size * cfg.hidden_size * ids.shape[0]
        total += cfg.num_hidden_layers * 2 * 2 * heads * head_dim * float((lengths**2).sum()) / 2
    return total


def _matmul_rate(model, batches, dtype) -> float:
    """FLOP/s of plain bf16 matmuls of every linear's shape at each batch's padded token count."""
    shapes = defaultdict(int)
    for n, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head"):
            shapes[(m.in_features, m.out_features)] += 1
    flops = seconds = 0.0
    for ids, _ in batches:
        t = ids.numel()
        for (k, n), count in shapes.items():
            x, w = torch.randn(t, k).to(dtype), torch.randn(n, k).to(dtype)
            x @ w.T
            best = min(_timed(lambda x=x, w=w: x @ w.T) for _ in range(3))
            flops += 2 * t * k * n * count
            seconds += best * count
    return flops / seconds


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _breakdown(model, batches) -> dict[str, float]:
    """Seconds per kind of module, from forward hooks (outermost call of a kind only; projections are
    subtracted from their attention module and the MLP's linears from the MLP)."""
    spent: dict[str, float] = defaultdict(float)
    starts: dict[int, float] = {}
    handles = []

    def kind_of(name: str, module) -> str | None:
        cls = type(module).__name__
        if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head"):
            return "linear"
        if cls.endswith("RMSNorm") or cls.endswith("LayerNorm"):
            return "norms"
        if cls.endswith("Attention"):
            return "attention core"
        if cls.endswith("MLP"):
            return "mlp activation"
        return None

    for name, module in model.named_modules():
        kind = kind_of(name, module)
        if kind is None:
            continue

        def pre(mod, _args):
            starts[id(mod)] = time.perf_counter()

        def post(mod, _args, _out, kind=kind):
            spent[kind] += time.perf_counter() - starts.pop(id(mod))

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    # attention and MLP modules contain linears: time those separately and subtract them
    inner: dict[str, float] = defaultdict(float)
    inner_starts: dict[int, float] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and (".self_attn." in name or ".mlp." in name):
            part = "attention core" if ".self_attn." in name else "mlp activation"

            def post_inner(mod, _args, _out, part=part):
                inner[part] += time.perf_counter() - inner_starts.pop(id(mod))

            def pre_inner(mod, _args):
                inner_starts[id(mod)] = time.perf_counter()

            handles += [module.register_forward_pre_hook(pre_inner), module.register_forward_hook(post_inner)]
    try:
        _prefill(model, batches)
    finally:
        for h in handles:
            h.remove()
    for part, seconds in inner.items():
        spent[part] -= seconds
    return dict(spent)


if __name__ == "__main__":
    main()
