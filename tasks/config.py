"""Every setting of a run, each default written once.

The CLI builds these, the flows and :func:`tasks.retrieval.search.search` take them, and every run's config file saves
them (``ragbatch answer --config RUN.config.json`` restores them). They are frozen dataclasses of plain values
(JSON-able, picklable for Dask), checked when built: a bad value fails before any model is loaded, with the
setting's name in the error. This module imports nothing heavy, so any layer may import it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
# The default by SQuAD-300 (benchmarks/RESULTS.md): RAG EM 0.563 vs 0.303 for 0.5B, at 2.7x the minutes.
DEFAULT_GENERATOR = "qwen2.5-coder-1.5b-instruct"

RETRIEVERS = ("dense", "bm25", "hybrid", "ann")
MATRIX_DTYPES = ("auto", "float32", "float16", "bfloat16", "int8")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """A setting out of range or of the wrong kind; the message names it."""


@dataclass(frozen=True)
class IndexConfig:
    """How documents become chunks and shards."""

    embedder: str = DEFAULT_EMBEDDER
    chunk_tokens: int = 200  # chunk size in the embedder's own tokens
    overlap_tokens: int = 32
    batch_docs: int = 256  # documents per batch (one shard, one commit)
    batch_chars: int = 4_000_000  # text per batch: a larger document is embedded and committed on its own
    compact_dead_ratio: float = 0.3  # compact when more than this share of rows is tombstoned (1 = never)
    max_removal_ratio: float = 0.5  # refuse a run removing more than this share of the indexed documents
    allow_mass_removal: bool = False
    follow_symlinks: bool = False  # UNSAFE: also index links pointing outside the folder

    def __post_init__(self) -> None:
        _positive(self, "chunk_tokens", "batch_docs", "batch_chars")
        if problem := chunking_problem(self.chunk_tokens, self.overlap_tokens):
            raise ConfigError(problem)
        _ratio(self, "compact_dead_ratio", "max_removal_ratio")


@dataclass(frozen=True)
class RetrievalConfig:
    """How chunks are found for a question."""

    # Hybrid by default: on the demo corpus dense MiniLM ranks Llama 2 documents above Llama 3 for "How many
    # tokens was Llama 3 trained on?" (0.654 vs 0.614); RRF with BM25 puts Llama 3 first.
    retriever: str = "hybrid"
    k: int = 5  # chunks of context per question
    embedder: str | None = None  # None: the store's own (another one is refused)
    rerank: str | None = None  # None | llm:<generator> | cross-encoder:<model>
    rerank_depth: int = 20  # how many of the retriever's top chunks the reranker reorders
    rrf_k: int = 60  # hybrid: the constant k in 1 / (k + rank)
    fusion_depth: int = 100  # hybrid: how deep each list goes into the fusion (fixed, so top-k does not depend on k)
    hybrid_weights: tuple[float, float] = (1.0, 1.0)  # hybrid: RRF weights of dense, bm25
    matrix_dtype: str = "auto"  # the chunk matrix on the device: float16 on a GPU, float32 on a CPU

    def __post_init__(self) -> None:
        if self.rerank in ("", "none"):
            object.__setattr__(self, "rerank", None)
        object.__setattr__(self, "hybrid_weights", tuple(float(w) for w in self.hybrid_weights))
        _choice(self, "retriever", RETRIEVERS)
        _choice(self, "matrix_dtype", MATRIX_DTYPES)
        _positive(self, "k", "rerank_depth", "rrf_k", "fusion_depth")
        if len(self.hybrid_weights) != 2 or min(self.hybrid_weights) < 0 or not any(self.hybrid_weights):
            raise ConfigError(f"hybrid_weights {list(self.hybrid_weights)}: two weights (dense, bm25), >= 0, not "
                              "both 0")

    @property
    def name(self) -> str:
        """``hybrid``, or ``hybrid+llm:…`` with a reranker: the retriever column of the result table."""
        return self.retriever + (f"+{self.rerank}" if self.rerank else "")


@dataclass(frozen=True)
class GenerationConfig:
    """Everything that decides the generator's output."""

    generator: str = DEFAULT_GENERATOR
    prompt: str | None = None  # a template of tasks/generation/prompts.toml; None = its default
    dtype: str = "auto"  # auto: bfloat16 on CUDA and on CPUs with native bf16 matmul, else float32
    max_new_tokens: int = 48
    batch_size: int = 16  # most prompts per generate() call
    token_budget: int = 16384  # most padded prompt tokens per generate() call (bounds prefill memory)
    snap: bool = True  # RAG answers snapped to the shortest passage span that answers; raw output kept

    def __post_init__(self) -> None:
        _choice(self, "dtype", DTYPE_CHOICES)
        _positive(self, "max_new_tokens", "batch_size", "token_budget")


C = TypeVar("C", IndexConfig, RetrievalConfig, GenerationConfig)


def to_dict(config: IndexConfig | RetrievalConfig | GenerationConfig) -> dict[str, Any]:
    """Plain JSON values (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


def from_dict(cls: type[C], data: dict[str, Any] | None, where: str = "config") -> C:
    """``cls`` from a saved dict: unknown keys and wrong kinds are refused by name; missing keys take defaults."""
    data = dict(data or {})
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown {cls.__name__} setting(s) {', '.join(unknown)}; known: "
                          f"{', '.join(known)}")
    defaults = cls()
    for key, value in data.items():
        want = getattr(defaults, key)
        ok = (value is None and (want is None or key in ("embedder", "rerank", "prompt"))
              or isinstance(want, bool) and isinstance(value, bool)
              or isinstance(want, int) and not isinstance(want, bool) and type(value) is int
              or isinstance(want, float) and type(value) in (int, float)
              or isinstance(want, str | type(None)) and isinstance(value, str)
              or isinstance(want, tuple) and isinstance(value, list | tuple))
        if not ok:
            raise ConfigError(f"{where}: {cls.__name__}.{key} = {value!r} is not a {type(want).__name__}")
    try:
        return cls(**data)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def with_changes(config: C, **changes: Any) -> C:
    """A copy with the given settings replaced (checked again); ``None`` values are ignored."""
    return from_dict(type(config), {**asdict(config), **{k: v for k, v in changes.items() if v is not None}})


# Loose names the Python entry points have always taken for a config field.
ALIASES = {"gen_batch_size": "batch_size", "context_k": "k"}


def apply_changes(changes: dict[str, Any], *configs: Any) -> tuple[Any, ...]:
    """``configs`` with loose keyword settings applied (``k=3, generator="..."``): each name goes to the first
    config with a field of that name (see :data:`ALIASES`), ``None`` values are ignored, and a name no config has
    is refused, so a typo fails instead of running with a default."""
    pending = {ALIASES.get(k, k): v for k, v in changes.items()}
    out = []
    for config in configs:
        names = {f.name for f in fields(config)}
        out.append(with_changes(config, **{k: pending.pop(k) for k in list(pending) if k in names}))
    if pending:
        known = sorted({f.name for c in configs for f in fields(c)})
        raise ConfigError(f"unknown setting(s) {', '.join(sorted(pending))}; known: {', '.join(known)}")
    return tuple(out)


def load_run_config(path: str | Path) -> dict[str, Any]:
    """A run's saved config (``RESULTS.config.json``) as a dict, with its ``retrieval`` and ``generation``
    sections parsed into :class:`RetrievalConfig` / :class:`GenerationConfig` (the rest as saved)."""
    path = Path(path).expanduser()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable run config ({exc})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("retrieval"), dict) \
            or not isinstance(raw.get("generation"), dict):
        raise ConfigError(f"{path}: no 'retrieval' and 'generation' sections; is it a ragbatch run config?")
    raw["retrieval"] = from_dict(RetrievalConfig, raw["retrieval"], f"{path} [retrieval]")
    raw["generation"] = from_dict(GenerationConfig, raw["generation"], f"{path} [generation]")
    return raw


MIN_CHUNK_TOKENS = 8  # a shorter chunk holds no passage worth retrieving


def chunking_problem(chunk_tokens: int, overlap_tokens: int) -> str | None:
    """Why chunk settings cannot work, or None: the one rule, for :class:`IndexConfig` (so the CLI refuses them up
    front) and for the chunker's own settings (tasks/ingest/chunk.py)."""
    if chunk_tokens < MIN_CHUNK_TOKENS:
        return f"chunk_tokens {chunk_tokens}: must be at least {MIN_CHUNK_TOKENS}"
    if not 0 <= overlap_tokens <= chunk_tokens // 2:
        return f"overlap_tokens {overlap_tokens}: must be between 0 and {chunk_tokens // 2} (half of chunk_tokens)"
    return None


def _positive(config: object, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if type(value) is not int or value < 1:
            raise ConfigError(f"{name} {value!r}: must be at least 1 (a whole number)")


def _ratio(config: object, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
            shown = f"{value:g}" if isinstance(value, int | float) else repr(value)
            raise ConfigError(f"{name} {shown}: must be between 0 and 1")


def _choice(config: object, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise ConfigError(f"{name} {value!r}: choose one of {', '.join(choices)}")
