"""Text rules shared by generation, evaluation and reporting: one normalisation, one notion of an answer's
content words and of its support in a passage.

They live here, not in evaluation, so that generation (snapping, citations) never reaches into evaluation.
``normalize_answer`` is SQuAD v1.1's rule, which exact match and F1 keep by definition.
"""

from __future__ import annotations

import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, collapse whitespace (the SQuAD v1.1 rule)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def answers_differ(a: str, b: str) -> bool:
    """Two answers differ unless they are equal after normalization (case, punctuation, articles)."""
    return normalize_answer(a) != normalize_answer(b)


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
