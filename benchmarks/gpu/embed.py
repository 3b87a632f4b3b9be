"""GPU readiness, part ``embed``: ragbatch's Embedder (tasks/indexing/embed.py) fp16 vs sentence-transformers fp16.

Random-weight BERTs of all-MiniLM-L6-v2's shape (6 layers, mean pooling) and bge-small's (12 layers, CLS), in
sentence-transformers layout. The tokenizer is a WordPiece over a synthetic 30,522-entry vocabulary (BERT's size
and special-token ids), so every word is one token and passage lengths are exact; with random weights only the
shapes and the token counts matter, so the real MiniLM tokenizer need not travel. Writes ``RESULTS/embed.json``.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

from common import Deadline, Results, accepts, device_name, dtype_name, fmt, free, guarded, pick_device, timed

EMBED_SHAPES = {
    # name: (BertConfig fields, pooling, max_seq_length of the real model)
    "all-MiniLM-L6-v2": (dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
                         "mean", 256),
    "bge-small-en-v1.5": (dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=12, intermediate_size=1536),
                          "cls", 512),
}
SMOKE_BERT = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64)  # layers kept from the real shape
VOCAB_SIZE = 30522
BERT_SPECIALS = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0-103


def synthetic_vocab(size: int = VOCAB_SIZE) -> tuple[list[str], list[str]]:
    """(vocabulary, whole words): BERT's special ids, then pseudo-words of 2-3 syllables, then '##' pieces."""
    cons, vows = "bcdfghjklmnprstvwxyz", "aeiou"
    syl = [c + v for c in cons for v in vows]  # 100
    pieces = ["##" + s for s in syl] + ["##" + c for c in cons] + list(".,;:!?()-'")
    n_words = size - len(BERT_SPECIALS) - len(pieces)
    words = [a + b for a in syl for b in syl]  # 10,000
    words += [a + b + c for a in syl for b in syl for c in syl][: n_words - len(words)]
    vocab = BERT_SPECIALS + words + pieces
    assert len(vocab) == size, len(vocab)
    return vocab, words


def wordpiece_tokenizer(vocab: list[str], folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 101), ("[SEP]", 102)])
    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)
    fast.save_pretrained(str(folder))


def passages(words: list[str], n: int, lo: int, hi: int, seed: int = 0) -> list[str]:
    """n passages of one-token words; 70% full chunks (hi-80..hi tokens), 30% short tails (lo..hi-80)."""
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        m = rnd.randint(max(lo, hi - 80), hi) if rnd.random() < 0.7 else rnd.randint(lo, max(lo, hi - 80))
        out.append(" ".join(rnd.choice(words) for _ in range(m - 2)))  # + [CLS] [SEP]
    return out


def build_st_folder(name: str, smoke: bool, tokdir: Path, work: Path) -> tuple[Path, str, int, dict]:
    """A random-weight BERT of ``name``'s shape saved in sentence-transformers layout; (folder, pooling, max len)."""
    import shutil
    import warnings

    import torch
    from transformers import BertConfig, BertModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
        except ImportError:
            from sentence_transformers.models import Normalize, Pooling, Transformer
        from sentence_transformers import SentenceTransformer

    shape, pooling, max_len = EMBED_SHAPES[name]
    shape = {**shape, **(SMOKE_BERT if smoke else {})}
    torch.manual_seed(0)
    hf = work / f"{name}-hf"
    BertModel(BertConfig(vocab_size=VOCAB_SIZE, max_position_embeddings=512, **shape)).save_pretrained(str(hf))
    for f in tokdir.iterdir():
        shutil.copy(f, hf / f.name)
    st = SentenceTransformer(modules=[Transformer(str(hf), max_seq_length=max_len),
                                      Pooling(shape["hidden_size"], pooling_mode=pooling), Normalize()], device="cpu")
    out = work / name
    st.save(str(out))
    return out, pooling, max_len, shape


def cmd_embed(args) -> int:
    import torch

    device = pick_device(args.smoke)
    dl = Deadline(args.budget)
    n = args.n or (48 if args.smoke else 20000)
    lo, hi = (8, 60) if args.smoke else (16, 230)
    repeats = 1 if args.smoke else 2
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    res = Results(args.results, "embed", device=device_name(device), dtype=dtype_name(dtype), passages=n,
                  smoke=args.smoke)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight loading / shard writing bars of the temporary model folders
    hf_logging.set_verbosity_error()
    work = Path(tempfile.mkdtemp(prefix="ragbatch-gpu-embed-"))
    vocab, words = synthetic_vocab()
    tokdir = work / "tokenizer"
    wordpiece_tokenizer(vocab, tokdir)
    texts = passages(words, n, lo, hi)
    print(f"embedding on {device_name(device)}: {n} passages of {lo}-{hi} tokens, {res.data['meta']['dtype']}, "
          f"best of {repeats}")
    print(f"{'model':20s} {'pool':4s} {'L':>2s} {'tok/psg':>7s} {'ragbatch/s':>10s} {'ST bs32/s':>10s} "
          f"{'ST bs128/s':>10s} {'ratio':>6s} {'vs best':>7s} {'min cos':>8s}")
    names = list(EMBED_SHAPES)
    for mi, name in enumerate(names):
        if dl.left() < (5 if args.smoke else 25):
            res.note(f"{name}: skipped, the part's time cap is near")
            continue
        m_dl = Deadline.after(dl.left() / (len(names) - mi))  # this model's share
        with guarded(res, name):  # one model failing must not stop the other
            row = embed_one(name, texts, device, dtype, repeats, m_dl, res, args.smoke, tokdir, work)
            res.add(row)
            print(f"{name:20s} {row['pooling']:4s} {row['shape']['num_hidden_layers']:2d} "
                  f"{row['tokens_per_passage']:7.1f} {row['ragbatch_per_s']:10.1f} {row['st32_per_s']:10.1f} "
                  f"{fmt(row['st128_per_s']):>10s} {row['ratio_vs_st32']:5.2f}x {row['ratio_vs_best_st']:6.2f}x "
                  f"{row['min_cos']:8.5f}", flush=True)
        free(device)
    res.finish()
    return 0 if res.data["rows"] else 1


def embed_one(name: str, texts: list[str], device: str, dtype, repeats: int, dl: Deadline, res: Results,
              smoke: bool, tokdir: Path, work: Path) -> dict:
    """ragbatch's Embedder vs SentenceTransformer.encode (batch 32, its default, and 128) on one model shape."""
    import torch
    from sentence_transformers import SentenceTransformer

    from tasks.indexing.embed import Embedder, resolve_embedder

    folder, pooling, _, shape = build_st_folder(name, smoke, tokdir, work)
    config = resolve_embedder(str(folder))
    if config.pooling != pooling:
        res.note(f"{name}: resolve_embedder read pooling {config.pooling!r}, expected {pooling!r}")
    kw = {"device": device}
    if accepts(Embedder.__init__, "dtype"):
        kw["dtype"] = dtype
    ours = Embedder(config, **kw)
    st = SentenceTransformer(str(folder), device=device)
    if dtype == torch.float16:
        st.half()
    st.max_seq_length = config.max_length
    n = len(texts)
    n_tok = sum(len(t) for t in ours.tokenizer(texts, add_special_tokens=True)["input_ids"])
    st_kw = dict(normalize_embeddings=True, convert_to_tensor=True, show_progress_bar=False)
    ours.embed_passages(texts[:256])  # warm-up: kernels, allocator
    st.encode(texts[:256], batch_size=32, **st_kw)
    plan = [("ragbatch", ours.embed_passages, {}), ("st32", st.encode, {"batch_size": 32, **st_kw}),
            ("st128", st.encode, {"batch_size": 128, **st_kw}), ("ragbatch", ours.embed_passages, {})]
    best: dict[str, float] = {}
    outs: dict[str, torch.Tensor] = {}
    for rep in range(repeats):
        t_round = time.monotonic()
        for key, fn, fkw in plan:
            if dl.left() < 3 and key in best:
                continue
            t, outs[key] = timed(device, fn, texts, **fkw)
            best[key] = min(best.get(key, float("inf")), t)
        if rep + 1 < repeats and time.monotonic() - t_round > dl.left():
            res.note(f"{name}: {rep + 1} round(s) only, another would pass this model's share of the time cap")
            break
    a = torch.nn.functional.normalize(outs["ragbatch"].float().cpu(), dim=1)
    b = torch.nn.functional.normalize(outs["st32"].float().cpu(), dim=1)
    cos = (a * b).sum(1)
    row = {"model": name, "shape": shape, "pooling": config.pooling, "max_length": config.max_length,
           "ours_dtype": dtype_name(next(ours.model.parameters()).dtype),
           "st_dtype": dtype_name(next(st.parameters()).dtype), "passages": n,
           "tokens_per_passage": round(n_tok / n, 1), "ragbatch_per_s": n / best["ragbatch"],
           "st32_per_s": n / best["st32"], "st128_per_s": n / best["st128"] if "st128" in best else None,
           "min_cos": float(cos.min()), "mean_cos": float(cos.mean())}
    row["ratio_vs_st32"] = row["ragbatch_per_s"] / row["st32_per_s"]
    row["ratio_vs_best_st"] = row["ragbatch_per_s"] / max(row["st32_per_s"], row["st128_per_s"] or 0)
    return row
