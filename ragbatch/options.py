"""The command line's options for the run settings, declared once for every command that takes them.

Each option is a field of :class:`tasks.config.IndexConfig`, :class:`~tasks.config.RetrievalConfig` or
:class:`~tasks.config.GenerationConfig`. Its default is ``None``, meaning "the config's value" (shown in the help,
read from the dataclass), so a default lives only in tasks/config.py and an option given on the command line can
be told from one that was not (``answer --config`` restores a run, and what is given explicitly wins).
:func:`with_settings` adds a group's options to a command and hands it a :class:`Settings`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer

from tasks.config import ConfigError, GenerationConfig, IndexConfig, RetrievalConfig, with_changes

GROUPS: dict[str, type] = {"index": IndexConfig, "retrieval": RetrievalConfig, "generation": GenerationConfig}

# field -> (flags, help) per group; the type is the field's own (tuples are typed as "a,b").
OPTIONS: dict[str, dict[str, tuple[tuple[str, ...], str]]] = {
    "index": {
        "embedder": (("--embedder",), "Packaged alias, local folder or Hugging Face id"),
        "chunk_tokens": (("--chunk-tokens",), "Chunk size in embedder tokens"),
        "overlap_tokens": (("--overlap-tokens",), "Overlap between chunks, tokens"),
        "batch_docs": (("--batch-docs",), "Documents per batch (one shard, one commit)"),
        "batch_chars": (("--batch-chars",), "Characters of text per batch; a larger document is a batch of its own"),
        "compact_dead_ratio": (("--compact-dead-ratio",), "Compact when more than this share of rows is tombstoned "
                                                          "(1 = never)"),
        "max_removal_ratio": (("--max-removal-ratio",), "Refuse a run removing more than this share of the indexed "
                                                        "documents"),
        "allow_mass_removal": (("--allow-mass-removal",), "Allow a run past --max-removal-ratio (an index is never "
                                                          "emptied)"),
        "follow_symlinks": (("--follow-symlinks",), "UNSAFE: also index symlinked files pointing outside DOCS_DIR "
                                                    "(any file the link names)"),
    },
    "retrieval": {
        "retriever": (("--retriever", "-r"), "dense | bm25 | hybrid (RRF of dense and bm25) | ann (FAISS HNSW, "
                                             "approximate dense)"),
        "k": (("-k",), "Chunks of context per question"),
        "embedder": (("--embedder",), "Must match the store's (default: the store's)"),
        "rerank": (("--rerank",), "none | llm:<generator> (offline yes/no judge) | cross-encoder:<model> (users with "
                                  "weights)"),
        "rerank_depth": (("--rerank-depth",), "How many of the retriever's top chunks to rerank"),
        "rrf_k": (("--rrf-k",), "hybrid: the RRF constant k in 1 / (k + rank)"),
        "fusion_depth": (("--fusion-depth",), "hybrid: how deep each list goes into the fusion"),
        "hybrid_weights": (("--hybrid-weights",), "hybrid: RRF weights of dense,bm25"),
        "matrix_dtype": (("--matrix-dtype",), "The chunk matrix on the device: auto (float16 on GPU, float32 on CPU) "
                                              "| float32 | float16 | bfloat16 | int8"),
    },
    "generation": {
        "generator": (("--generator",), "Packaged alias, local folder or HF id"),
        "prompt": (("--prompt",), "Prompt template of tasks/generation/prompts.toml (default: the file's default)"),
        "dtype": (("--dtype",), "Generator weights: auto (bfloat16 on CUDA and on CPUs with native bf16 matmul, else "
                                "float32) | float32 | bfloat16 | float16"),
        "max_new_tokens": (("--max-new-tokens",), "Most tokens per answer"),
        "batch_size": (("--gen-batch-size",), "Most prompts per generate() call"),
        "token_budget": (("--token-budget",), "Most padded prompt tokens per generate() call"),
        "snap": (("--snap/--no-snap",), "Snap RAG answers to the shortest passage span that answers (raw output "
                                        "kept)"),
    },
}


@dataclass
class Settings:
    """The settings options a command was given (``None`` left out), turned into configs on request."""

    given: dict[str, dict[str, Any]]
    flags: dict[str, dict[str, str]] = field(default_factory=dict)  # group -> field -> its flag, for messages

    def config(self, group: str, base: Any = None) -> Any:
        """``base`` (default: the group's defaults) with the given options applied; a bad value is a
        :class:`ConfigError` naming its flag, raised before any work."""
        values = dict(self.given.get(group, {}))
        flags = self.flags.get(group, {})
        if isinstance(values.get("hybrid_weights"), str):
            text = values["hybrid_weights"]
            try:
                values["hybrid_weights"] = [float(w) for w in text.split(",")]
            except ValueError:
                raise ConfigError(f"--hybrid-weights {text!r}: two numbers (dense,bm25), e.g. 1,1") from None
        try:
            config = with_changes(base if base is not None else GROUPS[group](), **values)
        except ConfigError as exc:
            name, _, rest = str(exc).removeprefix("config: ").partition(" ")
            raise ConfigError(f"{flags.get(name, name)} {rest}") from None
        if group == "generation":
            from tasks.generation.prompts import get_prompt

            get_prompt(config.prompt)  # an unknown template fails here, not after the index is loaded
        return config

    def index(self, base: IndexConfig | None = None) -> IndexConfig:
        return self.config("index", base)

    def retrieval(self, base: RetrievalConfig | None = None) -> RetrievalConfig:
        return self.config("retrieval", base)

    def generation(self, base: GenerationConfig | None = None) -> GenerationConfig:
        return self.config("generation", base)


def with_settings(*groups: str, skip: tuple[str, ...] = (), flags: dict[str, tuple[str, ...]] | None = None,
                  helps: dict[str, str] | None = None):
    """Add the options of ``groups`` to a typer command, which takes a ``settings: Settings`` parameter instead.

    ``skip``: ``group.field`` names left out; ``flags`` / ``helps``: another flag or help for a ``group.field``
    (``eval`` calls the context size ``--context-k``, since its ``-k`` is the recall cut-offs).
    """
    def decorate(fn: Any) -> Any:
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.name != "settings"]
        extra, names, flag_of = [], {}, {}
        for group in groups:
            defaults = GROUPS[group]()
            for name, (decls, help_) in OPTIONS[group].items():
                key = f"{group}.{name}"
                if key in skip:
                    continue
                decls = (flags or {}).get(key, decls)
                default = getattr(defaults, name)
                kind = _option_type(default)
                shown = ",".join(f"{w:g}" for w in default) if isinstance(default, tuple) else default
                text = (helps or {}).get(key, help_) + ("" if default is None else f" (default: {shown})")
                param = f"{group}_{name}"
                extra.append(inspect.Parameter(param, inspect.Parameter.KEYWORD_ONLY, default=None,
                                               annotation=Annotated[kind | None, typer.Option(*decls, help=text)]))
                names[param] = (group, name)
                flag_of.setdefault(group, {})[name] = decls[0].split("/")[0]

        def command(**kw: Any) -> Any:
            given: dict[str, dict[str, Any]] = {g: {} for g in groups}
            for param, (group, name) in names.items():
                value = kw.pop(param)
                if value is not None:
                    given[group][name] = value
            return fn(**kw, settings=Settings(given, flag_of))

        command.__name__, command.__doc__, command.__module__ = fn.__name__, fn.__doc__, fn.__module__
        command.__signature__ = sig.replace(parameters=own + extra)  # type: ignore[attr-defined]
        return command

    return decorate


def _option_type(default: Any) -> type:
    """The option's value type: the default's (tuples are typed in as ``1,1``; optional strings are str)."""
    if isinstance(default, bool):
        return bool
    if isinstance(default, tuple) or default is None:
        return str
    return type(default)
