"""Benchmark: our embedder vs sentence-transformers ``encode`` — same model, texts and device, one run.

    python benchmarks/embed.py                       # all-MiniLM-L6-v2 on the demo corpus, CPU
    python benchmarks/embed.py --random-weights bge-small --n 20000 --device cuda   # GPU, BGE shape

Prints passages/s for both, the ratio (ours / sentence-transformers), and the cosine agreement.
Speed does not depend on the weights, so ``--random-weights`` builds a model of BGE's real shape
(bge-small: 384 hidden, 12 layers; bge-base: 768 hidden) in sentence-transformers layout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHAPES = {
    "bge-small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=12, intermediate_size=1536),
    "bge-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


def demo_texts(n: int) -> list[str]:
    from tasks.demo.corpus import build_demo_corpus

    corpus = build_demo_corpus() / "helm_models.jsonl"
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines() if line.strip()]
    out = []
    while len(out) < n:  # repeat the corpus if more texts are asked for
        out += texts
    return out[:n]


def random_model(shape: str, tokenizer_from: str, folder: Path) -> Path:
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    hf = folder / "hf"
    BertModel(BertConfig(vocab_size=30522, max_position_embeddings=512, **SHAPES[shape])).save_pretrained(hf)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (Path(tokenizer_from) / f).exists():
            shutil.copy(Path(tokenizer_from) / f, hf / f)
    word = models.Transformer(str(hf), max_seq_length=512)
    st = SentenceTransformer(modules=[word, models.Pooling(SHAPES[shape]["hidden_size"], pooling_mode="cls"),
                                      models.Normalize()], device="cpu")
    out = folder / shape
    st.save(str(out))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--random-weights", choices=sorted(SHAPES))
    ap.add_argument("--texts", type=Path, help="JSONL with a text field (default: the demo corpus)")
    ap.add_argument("--n", type=int, default=622)
    ap.add_argument("--device", default=None)
    ap.add_argument("--st-batch-size", type=int, default=32, help="sentence-transformers' batch size (its default)")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    from sentence_transformers import SentenceTransformer

    from tasks.device import default_device
    from tasks.indexing.embed import Embedder, resolve_embedder

    device = args.device or default_device()
    texts = (
        [json.loads(x)["text"] for x in args.texts.read_text().splitlines() if x.strip()][: args.n]
        if args.texts else demo_texts(args.n)
    )
    tmp = Path(tempfile.mkdtemp())
    name = args.model
    if args.random_weights:
        name = str(random_model(args.random_weights, resolve_embedder("all-MiniLM-L6-v2").path, tmp))
    config = resolve_embedder(name)
    ours = Embedder(config, device=device)
    st = SentenceTransformer(config.path, device=device)
    if device.startswith("cuda"):
        st.half()
    st.max_seq_length = config.max_length

    def run_ours() -> torch.Tensor:
        return ours.embed_passages(texts)

    def run_st() -> torch.Tensor:
        return st.encode(texts, batch_size=args.st_batch_size, normalize_embeddings=True, convert_to_tensor=True)

    ours.embed_passages(texts[:64])  # warm-up (kernels, allocator, caches)
    st.encode(texts[:64], batch_size=args.st_batch_size)
    best = {}
    results = {}
    for label, fn in (("ragbatch", run_ours), ("sentence-transformers", run_st), ("ragbatch#2", run_ours)):
        times = []
        for _ in range(args.repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        key = label.split("#")[0]
        best[key] = min(best.get(key, float("inf")), min(times))
        results[key] = out
    a, b = results["ragbatch"].float().cpu(), results["sentence-transformers"].float().cpu()
    cos = (a * b).sum(1)
    tok = ours.tokenizer(texts, add_special_tokens=True)["input_ids"]
    n_tok = sum(len(t) for t in tok)
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else ""
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores {gpu}; torch "
          f"{torch.__version__}; device {device}; threads {torch.get_num_threads()}")
    print(f"model: {args.random_weights or args.model} (pooling {config.pooling}); {len(texts)} texts, "
          f"{n_tok / len(texts):.0f} tokens on average")
    for key in ("ragbatch", "sentence-transformers"):
        print(f"{key:>22}: {len(texts) / best[key]:8.1f} passages/s  ({best[key]:.2f}s, best of {args.repeats})")
    print(f"{'ratio':>22}: {best['sentence-transformers'] / best['ragbatch']:.2f}x (ours / sentence-transformers)")
    print(f"{'agreement':>22}: min cosine {float(cos.min()):.6f}, mean {float(cos.mean()):.6f}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
