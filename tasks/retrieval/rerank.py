"""Rerankers over a retriever's top-N: a cross-encoder, or the local generator as a yes/no relevance judge.

- ``cross-encoder:<model>`` (e.g. ``cross-encoder:BAAI/bge-reranker-base`` or
  ``cross-encoder:cross-encoder/ms-marco-MiniLM-L6-v2``): ``AutoModelForSequenceClassification`` scores
  each (query, passage) pair; for users who have such weights (no registry package ships any, so our
  tests only check its mechanics with a tiny random model).
- ``llm:<generator>`` (e.g. ``llm:qwen2.5-coder-0.5b-instruct``): works offline here today. The causal
  LM reads "passage + question: does the passage answer it? yes/no" and the score is the log-probability
  of "yes" as its next token, from one batched forward pass (no decoding).
"""

from __future__ import annotations

from typing import Protocol

import torch

from tasks.cache import ProcessCache
from tasks.device import default_device

YES_PROMPT = (
    "Passage:\n{passage}\n\nQuestion: {question}\n"
    "Does the passage contain the answer to the question? Answer yes or no."
)


class Reranker(Protocol):
    name: str

    def score(self, query: str, passages: list[str]) -> list[float]: ...


class CrossEncoderReranker:
    def __init__(self, model: str, device: str | None = None, max_length: int = 512, batch_size: int = 32):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.name = f"cross-encoder:{model}"
        self.device = device or default_device()
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForSequenceClassification.from_pretrained(model).to(self.device).eval()
        self.max_length, self.batch_size = max_length, batch_size

    @torch.inference_mode()
    def score(self, query: str, passages: list[str]) -> list[float]:
        out: list[float] = []
        for i in range(0, len(passages), self.batch_size):
            batch = passages[i : i + self.batch_size]
            enc = self.tokenizer([query] * len(batch), batch, padding=True, truncation="only_second",
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
            logits = self.model(**enc).logits.float()
            # One logit: a relevance score; two: [irrelevant, relevant].
            s = logits[:, 0] if logits.shape[1] == 1 else logits[:, -1] - logits[:, 0]
            out += s.cpu().tolist()
        return out


class GeneratorYesReranker:
    def __init__(self, generator: str, device: str | None = None, batch_size: int = 8):
        from tasks.generation.generate import load_generator

        self.gen = load_generator(generator, device)
        self.name = f"llm:{generator}"
        self.batch_size = batch_size
        tok = self.gen.tokenizer
        self.yes_ids = sorted({tok.encode(w, add_special_tokens=False)[0] for w in ("yes", "Yes", " yes", " Yes")})

    @torch.inference_mode()
    def score(self, query: str, passages: list[str]) -> list[float]:
        convs = [[{"role": "user", "content": YES_PROMPT.format(passage=" ".join(p.split()), question=query)}]
                 for p in passages]
        ids = self.gen.encode(convs)
        out = [0.0] * len(ids)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        model = self.gen.model
        with self.gen.lock:  # the generator's model: one forward at a time
            for s in range(0, len(order), self.batch_size):
                batch = order[s : s + self.batch_size]
                x, m = self.gen.left_padded([ids[i] for i in batch])
                logits = model(input_ids=x, attention_mask=m).logits[:, -1]
                logp = torch.log_softmax(logits.float(), dim=-1)[:, self.yes_ids]
                yes = torch.logsumexp(logp, dim=-1).cpu().tolist()
                for r, i in enumerate(batch):
                    out[i] = yes[r]
        return out


_RERANKERS: ProcessCache[Reranker] = ProcessCache()


def load_reranker(spec: str, device: str | None = None) -> Reranker:
    """``cross-encoder:<model>`` or ``llm:<generator>`` (one instance per process)."""
    kind, _, model = spec.partition(":")
    if kind == "cross-encoder" and model:
        return _RERANKERS.get((spec, device), lambda: CrossEncoderReranker(model, device))
    if kind == "llm" and model:
        return _RERANKERS.get((spec, device), lambda: GeneratorYesReranker(model, device))
    raise ValueError(f"unknown reranker {spec!r}: use cross-encoder:<model> or llm:<generator>")


def rerank(reranker: Reranker, query: str, candidates: list[int], texts: list[str], k: int
           ) -> tuple[list[int], list[float]]:
    """Reorder candidate rows by the reranker's score (stable for ties), keep the top k."""
    scores = reranker.score(query, texts)
    order = sorted(range(len(candidates)), key=lambda i: -scores[i])[:k]
    return [candidates[i] for i in order], [scores[i] for i in order]
