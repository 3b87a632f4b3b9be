"""Rerankers: the offline generator yes/no judge and the cross-encoder path (mechanics, random weights)."""

from __future__ import annotations

import shutil

import torch

from conftest import SMALLEST_GENERATOR, write_corpus
from tasks.retrieval.rerank import CrossEncoderReranker, GeneratorYesReranker, rerank

PASSAGES = ["Bananas are yellow fruit.", "Paris is the capital of France.", "The Nile flows north."]


def test_cross_encoder_path_with_a_tiny_random_model(tmp_path, minilm):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    folder = tmp_path / "ce"
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, num_labels=1)
    BertForSequenceClassification(cfg).save_pretrained(folder)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(f"{minilm.path}/{f}", folder / f)
    ce = CrossEncoderReranker(str(folder), device="cpu", batch_size=2)
    scores = ce.score("capital of France?", PASSAGES)
    assert len(scores) == 3 and all(isinstance(s, float) for s in scores)
    rows, top = rerank(ce, "capital of France?", [10, 11, 12], PASSAGES, k=2)
    assert top == sorted(scores, reverse=True)[:2]  # order follows the scores (weights are random)
    assert rows == [10 + scores.index(s) for s in top]


def test_generator_yes_reranker_scores_and_search(prefect_harness, tmp_path):
    from flows.index import run_index
    from tasks.retrieval.search import search

    judge = GeneratorYesReranker(SMALLEST_GENERATOR, device="cpu", batch_size=2)
    scores = judge.score("What is the capital of France?", PASSAGES)
    assert len(scores) == 3 and all(s <= 0.0 for s in scores)  # log-probabilities
    assert scores == judge.score("What is the capital of France?", PASSAGES)  # deterministic
    docs = write_corpus(tmp_path / "docs", {f"d{i}.txt": p for i, p in enumerate(PASSAGES * 2)})
    run_index(docs, tmp_path / "store")
    (base,), _ = search(str(tmp_path / "store"), ["capital of France"], k=6, retriever="dense")
    (rr,), t = search(str(tmp_path / "store"), ["capital of France"], k=3, retriever="dense",
                      rerank=f"llm:{SMALLEST_GENERATOR}", rerank_depth=6)
    assert len(rr.chunk_ids) == 3 and len(set(rr.chunk_ids)) == 3 and set(rr.chunk_ids) <= set(base.chunk_ids)
    assert rr.scores == sorted(rr.scores, reverse=True) and "rerank_s" in t
