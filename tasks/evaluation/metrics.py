"""Scores: exact match, token F1 and containment of gold answers (SQuAD v1.1's definitions), and retrieval's
recall, hit, MRR and nDCG at k. The text rules they share with generation live in tasks/text.py."""

from __future__ import annotations

from collections import Counter

from tasks.text import normalize_answer


def exact_match(prediction: str, golds: list[str] | tuple[str, ...]) -> float:
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(g) for g in golds)) if golds else 0.0


def token_f1(prediction: str, golds: list[str] | tuple[str, ...]) -> float:
    return max((_f1(prediction, g) for g in golds), default=0.0)


def contains_gold(prediction: str, golds: list[str] | tuple[str, ...]) -> bool:
    p = f" {normalize_answer(prediction)} "
    return any(f" {normalize_answer(g)} " in p for g in golds if normalize_answer(g))


def _f1(prediction: str, gold: str) -> float:
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = Counter(p) & Counter(g)
    same = sum(common.values())
    if not p or not g:
        return float(p == g)
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


# ---------------------------------------------------------------- retrieval
# A ranking is the list of retrieved ids, best first (possibly shorter than k); ``relevant`` the set of
# relevant ids. Denominators come from the relevant set, never from what was retrieved, so a short
# result list cannot inflate a score.


def recall_at_k(ranking: list[str], relevant: set[str], k: int) -> float:
    """Share of the relevant ids found in the top k (0 when nothing is relevant)."""
    if not relevant:
        return 0.0
    return len(set(ranking[:k]) & relevant) / len(relevant)


def hit_at_k(ranking: list[str], relevant: set[str], k: int) -> float:
    return float(any(r in relevant for r in ranking[:k]))


def mrr_at_k(ranking: list[str], relevant: set[str], k: int = 10) -> float:
    for i, r in enumerate(ranking[:k], 1):
        if r in relevant:
            return 1.0 / i
    return 0.0


def ndcg_at_k(ranking: list[str], relevant: set[str], k: int = 10) -> float:
    """Binary-gain nDCG; the ideal DCG places min(|relevant|, k) relevant ids first (not the retrieved list)."""
    import math

    dcg = sum(1.0 / math.log2(i + 1) for i, r in enumerate(ranking[:k], 1) if r in relevant)
    ideal = sum(1.0 / math.log2(i + 1) for i in range(1, min(len(relevant), k) + 1))
    return dcg / ideal if ideal else 0.0


def first_relevant_rank(ranking: list[str], relevant: set[str]) -> int | None:
    """1-based rank of the first relevant id, or None when none was retrieved."""
    for i, r in enumerate(ranking, 1):
        if r in relevant:
            return i
    return None
