"""GPU readiness, part ``generate``: Generator.generate_ids (tasks/generation/generate.py), batched, vs one plain HF
``model.generate`` per prompt.

Random Qwen2ForCausalLM of Qwen2.5-0.5B's and 1.5B's shapes, bf16, greedy, with no-RAG prompts of ~40 tokens and
RAG prompts of ~600 (random token ids of realistic lengths: no tokenizer needed). Writes ``RESULTS/generate.json``.
"""

from __future__ import annotations

import inspect
import random
import time
import types

from common import Deadline, Results, accepts, device_name, dtype_name, fmt, free, guarded, pick_device, sync, timed

QWEN_SHAPES = {  # Qwen2.5-0.5B and -1.5B (Instruct and Coder share them), from their config.json
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, tie_word_embeddings=True),
}
QWEN_COMMON = dict(vocab_size=151936, max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0,
                   bos_token_id=151643, eos_token_id=151645, pad_token_id=151643)
SMOKE_QWEN = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def random_qwen(name: str, smoke: bool, device: str, dtype):
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = {**QWEN_COMMON, **QWEN_SHAPES[name], **(SMOKE_QWEN if smoke else {})}
    config = Qwen2Config(**cfg)
    torch.manual_seed(0)
    with torch.device(device):  # initialize on the device: seconds, not the minute a CPU init of 1.5B takes
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        except TypeError:
            model = AutoModelForCausalLM.from_config(config, torch_dtype=dtype)
    model = model.to(device, dtype).eval()
    model.generation_config.eos_token_id = None  # random weights: every prompt makes exactly max_new_tokens
    return model, cfg


def make_generator(model, name: str, device: str):
    from tasks.generation.generate import Generator

    try:
        gen = Generator(name=name, path="random", model=model, tokenizer=None, device=device)
    except TypeError:
        gen = Generator(name, "random", model, None, device)
    gen.eos_ids = set()
    return gen


def dual_prompts(n_questions: int, vocab: int, smoke: bool, seed: int = 0) -> list[list[int]]:
    """No-RAG prompts of ~40 tokens and RAG prompts of ~600 (system prompt, 5 passages, question), interleaved."""
    g = random.Random(seed)
    short, long_ = ((6, 10), (40, 60)) if smoke else ((34, 46), (450, 750))
    lo_id, hi_id = (0, vocab - 1) if smoke else (1000, 150000)
    out = []
    for _ in range(n_questions):
        for lo, hi in (short, long_):
            out.append([g.randint(lo_id, hi_id) for _ in range(g.randint(lo, hi))])
    return out


def greedy_config(gen, model, max_new: int):
    if hasattr(gen, "greedy_config"):
        cfg = gen.greedy_config(max_new)
    else:
        from transformers import GenerationConfig

        cfg = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new, pad_token_id=gen.pad_id)
    cfg.eos_token_id = None
    return cfg


def cmd_generate(args) -> int:
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    device = pick_device(args.smoke)
    dl = Deadline(args.budget)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    n_q = args.questions or (4 if args.smoke else 64)
    max_new = args.max_new_tokens or (4 if args.smoke else 48)
    batch_sizes = [2, 8] if args.smoke else [16, 64]
    res = Results(args.results, "generate", device=device_name(device), dtype=dtype_name(dtype), questions=n_q,
                  prompts=2 * n_q, max_new_tokens=max_new, smoke=args.smoke)
    from tasks.generation.generate import Generator

    has_budget = accepts(Generator.generate_ids, "token_budget")
    default_budget = (inspect.signature(Generator.generate_ids).parameters["token_budget"].default
                      if has_budget else None)
    lengths = "no-RAG 6-10 and RAG 40-60 tokens" if args.smoke else "no-RAG 34-46 and RAG 450-750 tokens"
    print(f"generation on {device_name(device)}: {n_q} questions -> {2 * n_q} prompts ({lengths}), "
          f"{max_new} new tokens each, {res.data['meta']['dtype']}, greedy; generate_ids "
          f"{'has token_budget (default ' + str(default_budget) + ')' if has_budget else 'has no token_budget'}")
    names = list(QWEN_SHAPES)
    ctx = types.SimpleNamespace(device=device, dtype=dtype, n_q=n_q, max_new=max_new, batch_sizes=batch_sizes,
                                has_budget=has_budget, default_budget=default_budget, res=res, smoke=args.smoke)
    for mi, name in enumerate(names):
        share = dl.left() / (len(names) - mi)  # this model's share of what is left
        if dl.left() < (5 if args.smoke else 40):
            res.note(f"{name}: skipped, the part's time cap is near")
            continue
        with guarded(res, name):
            generate_one(name, Deadline.after(share), ctx)
        free(device)
    res.note("'same' counts prompts whose batched tokens equal the one-at-a-time tokens; with random weights the "
             "logits are near-ties, so bf16 batching noise flips many of them: informative, not a correctness test")
    res.finish()
    return 0 if res.data["rows"] else 1


def hf_generate_one(model, prompt: list[int], config, device: str) -> list[int]:
    """One plain ``model.generate`` call for one prompt (no padding, no batching): the baseline."""
    import torch

    t = torch.tensor([prompt], device=device)
    out = model.generate(input_ids=t, attention_mask=torch.ones_like(t), generation_config=config)
    return out[0, len(prompt):].tolist()


def generate_one(name: str, m_dl: Deadline, ctx) -> None:
    """One model shape: one HF generate per prompt (as many as its time share allows), then batched modes."""
    device, res, max_new = ctx.device, ctx.res, ctx.max_new
    t0 = time.perf_counter()
    model, cfg = random_qwen(name, ctx.smoke, device, ctx.dtype)
    gen = make_generator(model, f"{name} (random weights)", device)
    params = sum(p.numel() for p in model.parameters())
    load_s = time.perf_counter() - t0
    ids = dual_prompts(ctx.n_q, cfg["vocab_size"], ctx.smoke)
    lens = [len(p) for p in ids]
    print(f"\n{name}: {params / 1e6:.1f}M parameters ({cfg['num_hidden_layers']} layers, hidden "
          f"{cfg['hidden_size']}), built in {load_s:.1f}s; prompt tokens {min(lens)}..{max(lens)}, "
          f"total {sum(lens)}")
    gcfg = greedy_config(gen, model, max_new)
    # warm-up: kernels, allocator, both the single and the batched path
    hf_generate_one(model, ids[1], greedy_config(gen, model, 2), device)
    gen.generate_ids(ids[:4], max_new_tokens=2, batch_size=4, progress=False)
    sync(device)

    # one plain HF generate per prompt, in the flow's order (no-RAG, RAG, ...), whole pairs, until its share is used
    single_budget = 30.0 if ctx.smoke else min(30.0, 0.4 * m_dl.left())
    single: dict[int, list[int]] = {}
    s_time, s_tok = 0.0, 0
    for i, p in enumerate(ids):
        if i % 2 == 0 and single and (s_time > single_budget or m_dl.left() < 15):
            break
        dt, single[i] = timed(device, hf_generate_one, model, p, gcfg, device)
        s_time += dt
        s_tok += len(single[i])
    rows = [{"model": name, "mode": "one HF generate per prompt", "batch_size": 1, "token_budget": None,
             "prompts": len(single), "batches": len(single), "new_tokens": s_tok, "seconds": s_time,
             "tokens_per_s": s_tok / s_time, "padding_ratio": 1.0, "same_as_single": None, "params": params}]
    res.add(rows[0])
    modes = [(f"generate_ids batch {bs}", {"batch_size": bs}) for bs in ctx.batch_sizes]
    if ctx.has_budget:
        modes.append((f"generate_ids defaults (token_budget {ctx.default_budget})", {}))
    for label, kw in modes:
        if m_dl.left() < 5 and len(rows) > 1:
            res.note(f"{name} {label}: skipped, this model's share of the time cap is used")
            continue
        dt, out = timed(device, gen.generate_ids, ids, max_new_tokens=max_new, progress=False, **kw)
        st = gen.last_stats
        st = st.as_dict() if hasattr(st, "as_dict") else dict(vars(st))
        new = sum(len(o) for o in out)
        pr = st.get("padding_ratio") or (st["padded_tokens"] / st["prompt_tokens"] if st.get("prompt_tokens") else None)
        row = {"model": name, "mode": label, "batch_size": kw.get("batch_size"),
               "token_budget": kw.get("token_budget", ctx.default_budget), "prompts": len(ids),
               "batches": st.get("batches"), "new_tokens": new, "seconds": dt, "tokens_per_s": new / dt,
               "padding_ratio": pr, "same_as_single": sum(out[i] == single[i] for i in single),
               "compared": len(single), "ratio_vs_single": new / dt / rows[0]["tokens_per_s"], "params": params}
        rows.append(row)
        res.add(row)
    print(f"{'mode':44s} {'prompts':>7s} {'batches':>7s} {'new tok':>7s} {'seconds':>7s} {'tok/s':>8s} "
          f"{'ratio':>6s} {'pad/real':>8s} {'same':>7s}")
    for r in rows:
        same = f"{r['same_as_single']}/{r['compared']}" if r.get("same_as_single") is not None else ""
        print(f"{r['mode']:44s} {r['prompts']:7d} {fmt(r.get('batches'), 'd'):>7s} {r['new_tokens']:7d} "
              f"{r['seconds']:7.2f} {r['tokens_per_s']:8.1f} {fmt(r.get('ratio_vs_single'), '.2f'):>5s}x "
              f"{fmt(r['padding_ratio'], '.3f'):>8s} {same:>7s}", flush=True)
