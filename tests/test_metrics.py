"""Metrics against hand-computed values, including the edge cases peers get wrong."""

from __future__ import annotations

import math

import pytest

from tasks.evaluation.metrics import contains_gold, exact_match, mrr_at_k, ndcg_at_k, recall_at_k, token_f1
from tasks.text import answers_differ, normalize_answer, support


def test_squad_normalization_em_f1():
    assert normalize_answer("The  Carolina Panthers!") == "carolina panthers"
    assert exact_match("the Carolina Panthers.", ["Carolina Panthers"]) == 1.0
    assert exact_match("Panthers", ["Carolina Panthers"]) == 0.0
    # F1: prediction "carolina panthers team" vs gold "carolina panthers": P = 2/3, R = 1 -> 0.8
    assert token_f1("Carolina Panthers team", ["Carolina Panthers"]) == pytest.approx(0.8)
    assert token_f1("Denver", ["Carolina Panthers", "Denver Broncos"]) == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert token_f1("", ["x"]) == 0.0 and token_f1("anything", []) == 0.0
    assert contains_gold("Cam Newton was named the NFL MVP.", ["Cam Newton"])
    assert not contains_gold("128,000 tokens", ["8,000 tokens"])  # whole-token containment only
    assert not answers_differ("15 Trillion.", "15 trillion") and answers_differ("15 trillion", "2 trillion")


def test_recall_mrr_ndcg_hand_computed():
    ranking = ["a", "x", "b", "y", "c"]
    rel = {"a", "b", "c", "d"}  # d is never retrieved
    assert recall_at_k(ranking, rel, 1) == 0.25
    assert recall_at_k(ranking, rel, 3) == 0.5
    assert recall_at_k(ranking, rel, 10) == 0.75
    assert mrr_at_k(["x", "y", "b"], rel, 10) == pytest.approx(1 / 3)
    dcg = 1 / math.log2(2) + 1 / math.log2(4) + 1 / math.log2(6)
    idcg = sum(1 / math.log2(i + 1) for i in range(1, 5))  # 4 relevant, ideal puts all 4 first
    assert ndcg_at_k(ranking, rel, 10) == pytest.approx(dcg / idcg)


def test_fewer_results_than_k_do_not_inflate():
    # Two results, one relevant out of two relevant: recall 0.5 at every k, nDCG uses the ideal of 2.
    assert recall_at_k(["a", "x"], {"a", "b"}, 10) == 0.5
    assert ndcg_at_k(["a"], {"a", "b"}, 10) == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert ndcg_at_k(["a"], {"a"}, 10) == 1.0


def test_no_relevant_retrieved_and_no_relevant_at_all():
    assert recall_at_k(["x", "y"], {"a"}, 2) == 0.0 and mrr_at_k(["x", "y"], {"a"}, 10) == 0.0
    assert ndcg_at_k(["x"], {"a"}, 10) == 0.0
    assert recall_at_k(["x"], set(), 5) == 0.0 and ndcg_at_k(["x"], set(), 10) == 0.0
    assert mrr_at_k(["x"] * 10 + ["a"], {"a"}, 10) == 0.0  # rank 11 is outside MRR@10


def test_support_counts_content_tokens():
    assert support("15 trillion tokens", "trained on more than 15 trillion tokens") == 1.0
    assert support("the 2 trillion", "15 trillion tokens") == 0.5  # 'the' is not content
    assert support("", "anything") == 1.0
