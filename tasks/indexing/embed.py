"""Embedders as configuration: pooling, normalization, max length and prefixes are data, not code.

Settings come, in increasing priority, from a preset (``embedder_presets.toml``, for facts that a
model folder does not carry, such as BGE's query instruction), the model folder's sentence-transformers
files (``modules.json``, ``1_Pooling/config.json``, ``sentence_bert_config.json``,
``config_sentence_transformers.json``), and explicit overrides. They are checked when the model loads:
an unknown pooling or a max length past the model's position table is an error, not a guess.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import tomllib
import torch
from tqdm.auto import tqdm

from tasks.cache import ProcessCache
from tasks.config import DEFAULT_EMBEDDER
from tasks.device import default_device, dtype_name, resolve_dtype
from tasks.invariant import EMBED_TILE, make_batch_invariant, needs_tiles
from tasks.models.weights import WeightsError, weights_sha256

log = logging.getLogger(__name__)

POOLINGS = ("cls", "mean", "max", "lasttoken")
GROUP_TEXTS = 4096  # texts tokenized at once: a 50 MB document's chunks need not all be token ids together
PRESETS_FILE = Path(__file__).with_name("embedder_presets.toml")
# `auto` embeds in bfloat16 on CPUs with native bf16: measured on SQuAD-dev (benchmarks/embed_dtype.py), cosine to
# float32 >= 0.99991 on every row, recall@10 0.9195 vs 0.9185, 2.3x faster (benchmarks/RESULTS.md).
CPU_BF16_EMBEDDING = True


class EmbedderConfigError(ValueError):
    """An embedder whose settings are missing or inconsistent."""


class PassageTooLongError(ValueError):
    """A passage longer than the embedder's max length: the chunker must cut it smaller, never truncate it."""


@dataclass(frozen=True)
class EmbedderConfig:
    name: str
    path: str
    pooling: str
    normalize: bool
    max_length: int
    dim: int
    query_prefix: str = ""
    passage_prefix: str = ""
    weights_sha256: str = ""

    @property
    def fingerprint(self) -> dict[str, Any]:
        """What an index remembers about the model that built it; ``id`` hashes everything but names."""
        body = {k: v for k, v in asdict(self).items() if k not in ("name", "path")}
        fid = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        return {"id": fid, "name": self.name, "path": self.path, **body}


def _presets() -> dict[str, dict[str, Any]]:
    with open(PRESETS_FILE, "rb") as fh:
        return {k.lower(): v for k, v in tomllib.load(fh).items()}


def resolve_embedder(name: str = DEFAULT_EMBEDDER, **overrides: Any) -> EmbedderConfig:
    """Find the model folder and read its settings; ``overrides`` (pooling=…, max_length=…) win."""
    from tasks.models.prepare import prepare_embedder

    overrides = {k: v for k, v in overrides.items() if v is not None}
    presets = _presets()
    preset = presets.get(name.lower())
    if preset is None:  # a local copy named like the hub model (…/bge-small-en-v1.5) gets its preset too
        base = Path(name).name.lower()
        preset = next((v for k, v in presets.items() if "/" in k and k.rsplit("/", 1)[1] == base), {})
    preset = dict(preset)
    if Path(name).expanduser().exists():
        preset.pop("source", None)
    source = preset.pop("source", name)
    folder = Path(str(prepare_embedder(source)))
    if not folder.exists():
        folder = _hub_folder(str(folder))
    settings: dict[str, Any] = dict(preset)
    settings.update(_sentence_transformers_settings(folder))
    for key in ("query_prefix", "passage_prefix"):  # presets carry instructions a folder lacks
        if preset.get(key) and not settings.get(key):
            settings[key] = preset[key]
    settings.update(overrides)
    hf = _read_json(folder / "config.json") or {}
    hidden = hf.get("hidden_size") or hf.get("d_model") or hf.get("dim")
    positions = hf.get("max_position_embeddings")
    pooling = settings.get("pooling")
    if pooling not in POOLINGS:
        raise EmbedderConfigError(
            f"embedder {name!r}: pooling {pooling!r} is not known from its folder {folder} "
            f"(no 1_Pooling/config.json) nor a preset; pass pooling= one of {', '.join(POOLINGS)}"
        )
    max_length = int(settings.get("max_length") or min(positions or 512, 512))
    if positions and max_length > positions:
        raise EmbedderConfigError(
            f"embedder {name!r}: max_length {max_length} exceeds its {positions} position embeddings"
        )
    dim = int(settings.get("dim") or hidden or 0)
    if hidden and dim != hidden:
        raise EmbedderConfigError(f"embedder {name!r}: pooling dim {dim} differs from hidden size {hidden}")
    return EmbedderConfig(
        name=name,
        path=str(folder),
        pooling=pooling,
        normalize=bool(settings.get("normalize", True)),
        max_length=max_length,
        dim=dim,
        query_prefix=settings.get("query_prefix", ""),
        passage_prefix=settings.get("passage_prefix", ""),
        weights_sha256=_weights_sha256(folder),
    )


def _sentence_transformers_settings(folder: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    modules = _read_json(folder / "modules.json")
    if isinstance(modules, list):
        types = {m.get("type", "").rsplit(".", 1)[-1]: m for m in modules}
        if "Pooling" in types:
            pool = _read_json(folder / types["Pooling"].get("path", "1_Pooling") / "config.json") or {}
            if isinstance(pool.get("pooling_mode"), str):  # sentence-transformers ≥ 6
                chosen = [{"mean_tokens": "mean", "cls_token": "cls", "max_tokens": "max"}.get(
                    pool["pooling_mode"], pool["pooling_mode"])]
            else:  # sentence-transformers 2–5: one boolean per mode
                modes = {
                    "cls": pool.get("pooling_mode_cls_token"),
                    "mean": pool.get("pooling_mode_mean_tokens"),
                    "max": pool.get("pooling_mode_max_tokens"),
                    "lasttoken": pool.get("pooling_mode_lasttoken"),
                }
                chosen = [m for m, on in modes.items() if on]
            if len(chosen) != 1 or chosen[0] not in POOLINGS:
                raise EmbedderConfigError(f"{folder}: pooling config selects {chosen or 'nothing'}; need exactly one "
                                          f"of {', '.join(POOLINGS)}")
            out["pooling"] = chosen[0]
            dim = pool.get("word_embedding_dimension") or pool.get("embedding_dimension")
            if dim:
                out["dim"] = int(dim)
        out["normalize"] = "Normalize" in types
    sbert = _read_json(folder / "sentence_bert_config.json") or {}
    if sbert.get("max_seq_length"):
        out["max_length"] = int(sbert["max_seq_length"])
    prompts = (_read_json(folder / "config_sentence_transformers.json") or {}).get("prompts") or {}
    if prompts.get("query"):
        out["query_prefix"] = prompts["query"]
    for key in ("passage", "document"):
        if prompts.get(key):
            out["passage_prefix"] = prompts[key]
    return out


def _weights_sha256(folder: Path) -> str:
    try:
        return weights_sha256(folder)
    except WeightsError as exc:
        raise EmbedderConfigError(str(exc)) from None


def _hub_folder(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id))
    except Exception as exc:
        raise EmbedderConfigError(
            f"embedder {repo_id!r} is neither a packaged model, a local folder, nor reachable on the "
            f"Hugging Face hub ({type(exc).__name__}: {exc})"
        ) from exc


def _read_json(path: Path) -> Any:
    if not path.exists():
        return None
    return json.loads(path.read_text())


def embedding_dtype(device: str, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """The embedder's dtype: ``auto`` is float16 on CUDA, and on a CPU bfloat16 where bf16 matmul is native.

    bfloat16 on the CPU was kept only because it held quality (cosine to float32 and SQuAD recall@10,
    benchmarks/RESULTS.md); where bf16 is emulated it would be several times slower, so float32 there.
    """
    if dtype in (None, "auto") and device.startswith("cuda"):
        return torch.float16
    return resolve_dtype(dtype, device, half_ok=CPU_BF16_EMBEDDING)


class Embedder:
    """A loaded embedding model that applies its own configured pooling, prefix and normalization."""

    def __init__(self, config: EmbedderConfig, device: str | None = None, dtype: str | torch.dtype | None = None):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from tasks.attention import use_rowwise_attention

        hf_logging.disable_progress_bar()  # our own bar reports chunks/s; theirs only reports weight loading

        self.config = config
        self.device = device or default_device()
        self.dtype = dtype = embedding_dtype(self.device, dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(config.path)
        self.model = AutoModel.from_pretrained(config.path, dtype=dtype).to(self.device).eval()
        self.last_stats: dict[str, float] = {}
        # A text's embedding must not depend on the batch it is in: a resumed index run batches the remaining
        # chunks differently from a clean one, and a query is embedded alone or with others. On a CPU that
        # holds bit for bit: row-wise attention over real tokens (right padding moved SDPA's key blocks), fixed
        # row tiles (tasks/invariant.py) and pooling over each row's real tokens alone.
        self.exact = (needs_tiles(self.device) and use_rowwise_attention(self.model) is None
                      and bool(make_batch_invariant(self.model, prefill_tile=EMBED_TILE)))

    @property
    def special_tokens(self) -> int:
        return len(self.tokenizer("", add_special_tokens=True)["input_ids"])

    def embed_passages(self, texts: list[str], **kw: Any) -> torch.Tensor:
        return self.encode(texts, self.config.passage_prefix, truncate=False, **kw)

    def embed_queries(self, texts: list[str], **kw: Any) -> torch.Tensor:
        return self.encode(texts, self.config.query_prefix, truncate=True, **kw)

    @torch.inference_mode()
    def encode(
        self,
        texts: list[str],
        prefix: str = "",
        truncate: bool = True,
        batch_tokens: int = 16384,
        max_batch: int = 256,
        progress: bool = False,
    ) -> torch.Tensor:
        """Embed texts: tokenized ``GROUP_TEXTS`` at a time, sorted by length, batched by tokens, pooled, normalized.

        Passages (``truncate=False``) longer than the max length raise instead of being cut silently.
        Returns float32 rows on the CPU, in input order.
        """
        if not texts:
            return torch.empty(0, self.config.dim)
        t0 = time.perf_counter()
        out = torch.empty(len(texts), self.config.dim, dtype=torch.float32)
        bar = tqdm(total=len(texts), desc="embed", unit="chunk", disable=not progress, leave=False)
        for g in range(0, len(texts), GROUP_TEXTS):  # token ids of one group at a time: memory stays bounded
            out[g : g + GROUP_TEXTS] = self._encode_group(texts[g : g + GROUP_TEXTS], prefix, truncate, batch_tokens,
                                                          max_batch, bar, g)
        bar.close()
        if self.config.normalize:
            out = torch.nn.functional.normalize(out, dim=-1)
        secs = time.perf_counter() - t0
        self.last_stats = {"texts": len(texts), "seconds": secs, "per_s": len(texts) / max(secs, 1e-9)}
        return out

    def _encode_group(self, texts: list[str], prefix: str, truncate: bool, batch_tokens: int, max_batch: int,
                      bar: tqdm, first: int) -> torch.Tensor:
        ml = self.config.max_length
        enc = self.tokenizer(
            [prefix + t for t in texts], add_special_tokens=True, truncation=False, verbose=False
        )["input_ids"]
        too_long = [i for i, ids in enumerate(enc) if len(ids) > ml]
        if too_long and not truncate:
            i = too_long[0]
            raise PassageTooLongError(
                f"{len(too_long)} passage(s) exceed the embedder's max length {ml} tokens "
                f"(first: #{first + i}, {len(enc[i])} tokens); chunk them smaller instead of truncating"
            )
        if too_long:
            log.warning("%d queries truncated to %d tokens", len(too_long), ml)
            enc = [ids[: ml - 1] + ids[-1:] if len(ids) > ml else ids for ids in enc]
        order = sorted(range(len(enc)), key=lambda i: -len(enc[i]))
        out = torch.empty(len(texts), self.config.dim, dtype=torch.float32)
        pos = 0
        pad_id = self.tokenizer.pad_token_id or 0
        while pos < len(order):
            longest = len(enc[order[pos]])
            n = max(1, min(max_batch, batch_tokens // max(longest, 1), len(order) - pos))
            idx = order[pos : pos + n]
            ids = torch.full((n, longest), pad_id, dtype=torch.long)
            mask = torch.zeros((n, longest), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, : len(enc[i])] = torch.tensor(enc[i])
                mask[row, : len(enc[i])] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            if self.exact:  # one row at a time on its real tokens: a pooled sum's order ignores the padding
                lengths = mask.sum(1).tolist()
                pooled = torch.cat([self._pool(hidden[r : r + 1, :n], mask[r : r + 1, :n])
                                    for r, n in enumerate(lengths)])
            else:
                pooled = self._pool(hidden, mask)
            out[idx] = pooled.float().cpu()
            pos += n
            bar.update(n)
        return out

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        p = self.config.pooling
        if p == "cls":
            return hidden[:, 0]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        if p == "mean":
            return (hidden.float() * m.float()).sum(1) / m.float().sum(1).clamp(min=1e-9)
        if p == "max":
            return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).max(1).values
        last = mask.sum(1) - 1  # right padding: the last real token
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


_EMBEDDERS: ProcessCache[Embedder] = ProcessCache()  # transformers' lazy imports are not thread-safe either


def load_embedder(config: EmbedderConfig, device: str | None = None,
                  dtype: str | torch.dtype | None = None) -> Embedder:
    """One loaded model per (config, device, dtype) per process: flows call this from every task."""
    device = device or default_device()
    key = (config.fingerprint["id"] + config.path, device, dtype_name(embedding_dtype(device, dtype)))
    return _EMBEDDERS.get(key, lambda: Embedder(config, device=device, dtype=dtype))
