"""Answer comparison helpers (SQuAD-style normalization, exact match, token F1)."""

from __future__ import annotations

import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, collapse whitespace (the SQuAD v1.1 rule)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, golds: list[str] | tuple[str, ...]) -> float:
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(g) for g in golds)) if golds else 0.0


def token_f1(prediction: str, golds: list[str] | tuple[str, ...]) -> float:
    return max((_f1(prediction, g) for g in golds), default=0.0)


def contains_gold(prediction: str, golds: list[str] | tuple[str, ...]) -> bool:
    p = f" {normalize_answer(prediction)} "
    return any(f" {normalize_answer(g)} " in p for g in golds if normalize_answer(g))


def answers_differ(a: str, b: str) -> bool:
    """Two answers differ unless they are equal after normalization (case, punctuation, articles)."""
    return normalize_answer(a) != normalize_answer(b)


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


# ---------------------------------------------------------------- faithfulness
STOPWORDS = frozenset(
    """a an the of in on at to for from by with and or but is are was were be been being it its this that these
    those as which who whom whose what when where why how not no do does did has have had i you he she we they
    them his her their our your my me him us than then so such can could would should will may might must
    about into over under between during after before also only very more most other some any each all both
    there here up down out off again further once""".split()
)


def content_tokens(text: str) -> list[str]:
    """Normalized tokens without stopwords: what an answer claims."""
    return [t for t in normalize_answer(text).split() if t not in STOPWORDS]


def support(answer: str, context: str) -> float:
    """Share of the answer's content tokens that occur in ``context`` (1.0 for an answer with none)."""
    toks = content_tokens(answer)
    if not toks:
        return 1.0
    ctx = set(normalize_answer(context).split())
    return sum(t in ctx for t in toks) / len(toks)
