"""Batched greedy generation with a local causal LM, and the dual (with / without context) pass.

Throughput comes from batching: prompts are sorted by token length so each batch holds similar lengths
(little padding), padded on the left (so every row's new tokens start at the same column), and each batch
is one ``model.generate`` call. The with-context and without-context prompts of all questions go through
one such pass together.

On a CPU, batching never changes an answer (``Generator.exact``), in bfloat16 as in float32, on the AMD Zen 4 and
the Intel AMX machines alike. Three things used to: torch's fused attention (SDPA) walks the keys in blocks, so
left padding shifted where its partial sums fell; a matmul with one row takes another kernel (gemv) than one with
several; and on AMX, oneDNN picks its bf16 GEMM kernel by the call's row count, so a row's result depended on how
many rows shared its call. bf16 keeps ~3 significant digits, so each flipped near-tie argmaxes. So attention
runs row by row on each row's real tokens (``tasks/attention.py``) and every linear layer multiplies in fixed
tiles of rows (``tasks/invariant.py``), a one-row batch included: a prompt's tokens are then the same alone or in
any batch (tested).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from tasks.cache import ProcessCache
from tasks.config import GenerationConfig
from tasks.device import default_device, dtype_name, numerics_id, resolve_dtype
from tasks.generation.keys import answer_key, generator_id
from tasks.generation.prompts import Message, PromptTemplate, get_prompt
from tasks.invariant import make_batch_invariant, needs_tiles, pack_weights
from tasks.models.prepare import prepare_generator

if TYPE_CHECKING:
    from storage.runs.answer_cache import AnswerCache

log = logging.getLogger(__name__)

def build_messages(question: str, contexts: list[tuple[str, str]] | None,
                   prompt: str | PromptTemplate | None = None) -> list[Message]:
    """Chat messages for one question under ``prompt`` (a name in ``tasks/generation/prompts.toml``, default its
    default).

    ``contexts`` are (doc_id, text) passages, None for no retrieval. Passages are numbered so an answer that
    cites ``[n]`` can be traced back. An empty list means "retrieval found nothing": the RAG template is still
    used, with no passages, so the two arms stay distinguishable in the results.
    """
    template = prompt if isinstance(prompt, PromptTemplate) else get_prompt(prompt)
    return template.messages(question, contexts)


# The defaults below are GenerationConfig's (tasks/config.py), where each setting is defined and checked once.
_DEFAULTS = GenerationConfig()
# A batch may hold at most this many padded tokens per real token: with prompts sorted by length, a 40-token
# no-RAG prompt never shares a batch with a 600-token RAG prompt (which cost 43% of prefill in padding).
MAX_PAD_RATIO = 1.1


def plan_batches(lengths: list[int], max_batch: int = _DEFAULTS.batch_size, token_budget: int = _DEFAULTS.token_budget,
                 max_pad_ratio: float = MAX_PAD_RATIO) -> list[list[int]]:
    """Indices of ``lengths`` grouped into batches, longest first, with bounded padding and size.

    Prompts are sorted by length (longest first, so memory trouble shows at once and the progress rate errs
    low) and cut greedily: a prompt joins the open batch only while the batch stays within ``max_batch`` rows,
    ``token_budget`` padded tokens and ``max_pad_ratio`` padded / real tokens. A prompt longer than the budget
    still gets a batch of its own.
    """
    if max_batch < 1 or token_budget < 1 or max_pad_ratio < 1:
        raise ValueError("max_batch and token_budget must be >= 1 and max_pad_ratio >= 1")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    real = width = 0
    for i in order:
        n = len(batches[-1]) + 1 if batches else 0
        fits = (batches and n <= max_batch and width * n <= token_budget
                and width * n <= max_pad_ratio * (real + lengths[i]))
        if fits:
            batches[-1].append(i)
            real += lengths[i]
        else:
            batches.append([i])
            real = width = lengths[i]
    return batches


@dataclass
class GenerationStats:
    """What one ``Generator.generate`` call did, for timing records."""

    prompts: int = 0
    batches: int = 0
    prompt_tokens: int = 0  # real tokens, without padding
    padded_tokens: int = 0  # prompt tokens including left padding (the work the model actually did)
    new_tokens: int = 0  # generated tokens up to and including each row's end-of-sequence token
    seconds: float = 0.0
    dtype: str = ""
    from_cache: int = 0  # answers served by the answer cache (not generated, not counted above)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def padding_ratio(self) -> float:
        """Padded / real prompt tokens: 1.0 means no prefill compute went on padding."""
        return self.padded_tokens / self.prompt_tokens if self.prompt_tokens else 1.0

    def as_dict(self) -> dict[str, float | str]:
        return {**asdict(self), "tokens_per_s": round(self.tokens_per_s, 2),
                "padding_ratio": round(self.padding_ratio, 3)}


class Generator:
    """A loaded causal LM with its tokenizer, ready for batched greedy chat generation."""

    def __init__(self, name: str, path: Path | str, model, tokenizer, device: str) -> None:
        self.name = name
        self.path = path
        self.device = device
        self.dtype = dtype_name(next(model.parameters()).dtype)
        self.model = model
        self.tokenizer = tokenizer  # None is allowed for generate_ids (random-weight benchmarks)
        self.last_stats = GenerationStats()
        eos = model.generation_config.eos_token_id
        if eos is None and tokenizer is not None:
            eos = tokenizer.eos_token_id
        self.eos_ids: set[int] = set(eos if isinstance(eos, list) else [eos]) - {None}
        pad = tokenizer.pad_token_id if tokenizer is not None else None
        if pad is None:
            pad = model.generation_config.pad_token_id
        if pad is None:
            pad = min(self.eos_ids) if self.eos_ids else 0
        self.pad_id: int = pad
        self.lock = threading.Lock()  # one forward at a time per model (Prefect may run tasks in threads)
        # Batch-invariant answers (module docstring): row-wise attention and fixed row tiles, on a CPU.
        self.exact = needs_tiles(device) and _rowwise_attention(model) and bool(make_batch_invariant(model))
        # Weights reordered once for oneDNN (tasks/invariant.py): tiles then cost what one plain call does; the
        # packing is part of the numerics an answer is cached under.
        self.packed = self.exact and bool(pack_weights(model))
        self.numerics = numerics_id(device) + ("|linear=onednn-packed" if self.packed else "")

    def __repr__(self) -> str:
        return f"Generator({self.name!r}, path={str(self.path)!r}, device={self.device!r}, dtype={self.dtype!r})"

    def render(self, conversation: list[Message]) -> str:
        """The prompt text for one conversation (chat template with the assistant turn opened)."""
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=True
            )
        # Base models without a template (e.g. gemma-3-270m): a plain transcript ending in "Answer:".
        return "\n\n".join(m["content"] for m in conversation) + "\nAnswer:"

    def encode(self, conversations: list[list[Message]]) -> list[list[int]]:
        """Token ids of the rendered prompts."""
        texts = [self.render(c) for c in conversations]
        # The chat template already writes any BOS it wants; adding special tokens again would double it.
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def generate(self, conversations: list[list[Message]], **kw: Any) -> list[str]:
        """Greedy answers for many conversations, in their original order (``kw``: those of ``generate_ids``)."""
        new = self.generate_ids(self.encode(conversations), **kw)
        return [self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]

    def left_padded(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) on the model's device, padded on the left: every row's last prompt token
        is in the last column, so new tokens (or a next-token score) line up across rows."""
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            input_ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
            attention_mask[row, width - len(p):] = 1
        return input_ids.to(self.device), attention_mask.to(self.device)

    def _count_new(self, row: list[int]) -> int:
        for i, tok in enumerate(row):
            if tok in self.eos_ids:
                return i + 1
        return len(row)

    @torch.inference_mode()
    def generate_ids(
        self,
        prompts: list[list[int]],
        max_new_tokens: int = _DEFAULTS.max_new_tokens,
        batch_size: int = _DEFAULTS.batch_size,
        progress: bool = True,
        token_budget: int = _DEFAULTS.token_budget,
        max_pad_ratio: float = MAX_PAD_RATIO,
    ) -> list[list[int]]:
        """Greedy continuations of token-id prompts, in their original order, cut after end-of-sequence.

        Batches come from :func:`plan_batches` (similar lengths together, at most ``batch_size`` rows,
        ``token_budget`` padded tokens and ``max_pad_ratio`` padded / real tokens; ``max_pad_ratio=inf`` with
        a huge budget gives the old fixed-size batches of the length-sorted prompts), padded on the left so
        every row's new tokens start at the same column; each batch is one ``model.generate`` call. Stats go
        to ``self.last_stats``.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        stats = GenerationStats(prompts=len(prompts), prompt_tokens=sum(len(p) for p in prompts), dtype=self.dtype)
        self.last_stats = stats
        if not prompts:
            return []
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt")
        self._check_fits(prompts, max_new_tokens)
        batches = plan_batches([len(p) for p in prompts], batch_size, token_budget, max_pad_ratio)
        out: list[list[int]] = [[] for _ in prompts]
        config = self.greedy_config(max_new_tokens)
        bar = tqdm(total=len(prompts), unit="prompt", desc=f"generate {self.name}", file=sys.stderr,
                   disable=not progress, dynamic_ncols=True)
        done_real = 0
        with self.lock, bar:
            t0 = time.perf_counter()
            for batch in batches:
                input_ids, attention_mask = self.left_padded([prompts[i] for i in batch])
                width = input_ids.shape[1]
                gen = self.model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                          generation_config=config)
                for i, row in zip(batch, gen[: len(batch), width:].tolist(), strict=True):
                    n = self._count_new(row)
                    stats.new_tokens += n
                    out[i] = row[:n]
                stats.batches += 1
                stats.padded_tokens += width * len(batch)
                stats.seconds = time.perf_counter() - t0
                bar.update(len(batch))
                done_real += sum(len(prompts[i]) for i in batch)
                bar.set_postfix(new_tok=stats.new_tokens, tok_s=f"{stats.tokens_per_s:.1f}",
                                pad=f"{stats.padded_tokens / done_real:.2f}")
        log.info("generated %s", stats.as_dict())
        return out

    def _check_fits(self, prompts: list[list[int]], max_new_tokens: int) -> None:
        """Refuse, before any compute, prompts that do not fit the model's context with their new tokens: past it
        a model answers garbage (or fails late, after an hour of other batches)."""
        context = getattr(self.model.config, "max_position_embeddings", None)
        longest = max(len(p) for p in prompts)
        if context and longest + max_new_tokens > context:
            raise ValueError(f"a prompt of {longest} tokens plus {max_new_tokens} new tokens exceeds {self.name}'s "
                             f"context of {context} tokens: lower -k, --chunk-tokens or --max-new-tokens")

    def greedy_config(self, max_new_tokens: int):
        """The model's generation config made greedy, without sampling knobs that would trigger warnings."""
        config = self.model.generation_config.__class__.from_dict(self.model.generation_config.to_dict())
        config.do_sample = False
        config.num_beams = 1
        for knob in ("temperature", "top_p", "top_k", "min_p", "typical_p"):
            if hasattr(config, knob):
                setattr(config, knob, None)
        config.max_new_tokens = max_new_tokens
        config.max_length = None
        config.pad_token_id = self.pad_id
        return config


def _rowwise_attention(model) -> bool:
    """Switch ``model`` to the row-wise exact attention of tasks/attention.py; False where it cannot take
    it."""
    from tasks.attention import use_rowwise_attention

    why = use_rowwise_attention(model)
    if why:
        log.warning("%s keeps %s attention (%s): batched answers may differ in their last bits from one prompt "
                    "at a time", type(model).__name__, model.config._attn_implementation, why)
    return why is None


_GENERATORS: ProcessCache[Generator] = ProcessCache()


def load_generator(name_or_path: str, device: str | None = None, dtype: str | torch.dtype | None = None) -> Generator:
    """Load (once per process and dtype) a generator by packaged alias, local folder or hub id.

    ``dtype`` ``auto`` (default) follows :func:`tasks.device.auto_dtype`: bfloat16 on CUDA and on CPUs with
    native bf16 matmul (2-3x faster prefill than float32 there), float32 on other CPUs. The tokenizer pads
    on the left so batched rows end where generation starts.
    """
    device = device or default_device()
    torch_dtype = resolve_dtype(dtype, device)
    path = prepare_generator(name_or_path, dtype_name(torch_dtype))
    return _GENERATORS.get((str(path), device, dtype_name(torch_dtype)),
                           lambda: _load(name_or_path, path, device, torch_dtype))


def _load(name_or_path: str, path: Path, device: str, torch_dtype: torch.dtype) -> Generator:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    model.to(device).eval()
    gen = Generator(name_or_path, path, model, tokenizer, device)
    log.info("loaded %s from %s on %s as %s in %.1fs", name_or_path, path, device, gen.dtype, time.perf_counter() - t0)
    return gen


@dataclass
class DualAnswers:
    """Both arms' answers of a batch of questions, their cache keys (tasks/generation/keys.py), and how many of
    the 2N came from the answer cache."""

    no_rag: list[str]
    rag: list[str]
    no_rag_keys: list[str]
    rag_keys: list[str]
    from_cache: int = 0


def dual_generate(
    generator: Generator,
    questions: list[str],
    contexts: list[list[tuple[str, str]]],
    settings: GenerationConfig = _DEFAULTS,
    progress: bool = True,
    cache: AnswerCache | None = None,
) -> DualAnswers:
    """No-RAG and RAG answers for each question, from one batched pass over the 2N prompts, as ``settings`` say
    (prompt template, new tokens, batch size, token budget).

    Running both arms through one plan lets the length sort fill batches across them (short no-RAG prompts
    together, long RAG prompts together). With ``cache`` (storage/runs/answer_cache.py) an answer whose key was
    seen is read, not generated: byte-identical, since answers depend only on what the key hashes. Stats of the
    pass are in ``generator.last_stats``.
    """
    if len(questions) != len(contexts):
        raise ValueError(f"{len(questions)} questions but {len(contexts)} context lists")
    template = get_prompt(settings.prompt)
    conversations = [template.messages(q, None) for q in questions]
    conversations += [template.messages(q, c) for q, c in zip(questions, contexts, strict=True)]
    ids = generator.encode(conversations)
    model_id = generator_id(generator.path)
    keys = [answer_key(p, model_id, template.name, settings.max_new_tokens, generator.dtype, generator.numerics)
            for p in ids]
    answers: list[str | None] = [cache.get(k) if cache is not None else None for k in keys]
    todo = [i for i, a in enumerate(answers) if a is None]
    generator.last_stats = GenerationStats(dtype=generator.dtype)
    if todo:
        new = generator.generate_ids([ids[i] for i in todo], max_new_tokens=settings.max_new_tokens,
                                     batch_size=settings.batch_size, progress=progress,
                                     token_budget=settings.token_budget)
        for i, row in zip(todo, new, strict=True):
            answers[i] = generator.tokenizer.decode(row, skip_special_tokens=True).strip()
            if cache is not None:
                cache.put(keys[i], answers[i])
    generator.last_stats.from_cache = len(answers) - len(todo)
    n = len(questions)
    done = [a or "" for a in answers]
    return DualAnswers(done[:n], done[n:], keys[:n], keys[n:], len(answers) - len(todo))
