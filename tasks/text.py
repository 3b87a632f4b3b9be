"""Text rules shared by generation, evaluation and reporting: two normalisations, one notion of an answer's content
words, of its support in a passage, and of a passage that holds it.

They live here, not in evaluation, so that generation (snapping, citations) never reaches into evaluation.

- ``normalize_answer`` is SQuAD v1.1's rule. Exact match and F1 keep it, because it is the benchmark's definition.
  It strips every punctuation mark, so "1.5" becomes "15" and "4,096" becomes "4096".
- ``normalize_word`` is the same rule for one word, except that a number stays whole: a decimal point stays
  ("1.5" is not "15"), and thousands separators go ("4,096" is "4096"). Everything that says whether a passage
  *supports* an answer uses it: faithfulness, the report's highlights, snapping and citations (issue 24). A
  number is a fact; two numbers that differ by a decimal point are different facts.
"""

from __future__ import annotations

import re
import string
from functools import lru_cache

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_WORD = re.compile(r"\S+")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, collapse whitespace (the SQuAD v1.1 rule)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


_NUMBER = re.compile(r"\d+(?:[.,]\d+)+")
_POINT = "\ue000"  # a private-use character: a decimal point while punctuation is stripped


def _number(m: re.Match[str]) -> str:
    """A number with separators, written canonically: "4,096" → "4096", "1,234.5" → "1234.5", "1.5" → "1.5",
    "1,5" → "1.5" (a comma before other than three digits is a decimal comma), "3.11.7" stays (a version)."""
    s = m.group()
    if "," in s and "." in s:  # the last separator is the decimal one
        dec = max(s.rfind(","), s.rfind("."))
        return s[:dec].replace(",", "").replace(".", "") + _POINT + s[dec + 1:]
    if "," in s:
        groups = s.split(",")
        if all(len(g) == 3 for g in groups[1:]):
            return "".join(groups)  # thousands
        return _POINT.join(groups)  # a decimal comma ("1,2,3", a list without spaces, becomes "1.2.3": not glued)
    return s.replace(".", _POINT)


@lru_cache(maxsize=1 << 16)
def normalize_word(word: str) -> str:
    """One whitespace-separated word, normalised as ``normalize_answer`` would, but with numbers kept whole (module
    docstring); "" for punctuation alone or an article."""
    w = _NUMBER.sub(_number, word.lower())
    w = "".join(ch for ch in w if ch not in _PUNCT).replace(_POINT, ".")
    return "" if w in ("a", "an", "the") else w


def support_tokens(text: str) -> list[str]:
    """The number-aware tokens of ``text``, in order (``normalize_word`` of each word, empty ones dropped)."""
    return [t for t in map(normalize_word, text.split()) if t]


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
    """Number-aware tokens without stopwords: what an answer claims."""
    return [t for t in support_tokens(text) if t not in STOPWORDS]


def support(answer: str, context: str) -> float:
    """Share of the answer's content tokens that occur in ``context`` (1.0 for an answer with none): faithfulness,
    and a passage's support of an answer in the verdicts."""
    toks = content_tokens(answer)
    if not toks:
        return 1.0
    ctx = set(support_tokens(context))
    return sum(t in ctx for t in toks) / len(toks)


def claims(answer: str, question: str = "") -> list[tuple[str, ...]]:
    """The phrases an answer must be found as, in order: its runs of content words, cut at stopwords and at the
    question's own words (an answer that restates the question, "Llama 3 was trained on 15 trillion tokens", claims
    "3" and "15 trillion"). A number is always claimed, even when the question has it: "3 billion" asked of
    "Ministral 3" must not be held by a passage saying "8 billion". An answer made only of the question's words
    claims its content words, cut at stopwords."""
    asked = set(support_tokens(question))
    for skip in (asked, set()):
        runs: list[tuple[str, ...]] = []
        run: list[str] = []
        for t in support_tokens(answer):
            if t in STOPWORDS or (t in skip and not any(ch.isdigit() for ch in t)):
                if run:
                    runs.append(tuple(run))
                run = []
            else:
                run.append(t)
        if run:
            runs.append(tuple(run))
        if runs:
            return runs
    return []


def holding_spans(answer: str, passage: str, question: str = "") -> list[tuple[int, int]] | None:
    """Where ``passage`` holds ``answer``: for each of the answer's :func:`claims`, the [start, end) character span of
    its first occurrence as consecutive words of the passage (stopwords between them skipped). None when a claim
    is missing or only partly there: "15 trillion" is not held by "2 trillion", nor "1.5 billion" by "15 billion".
    An answer with no claim is held nowhere."""
    runs = claims(answer, question)
    if not runs:
        return None
    words = [(normalize_word(m.group()), m.start(), m.end()) for m in _WORD.finditer(passage)]
    words = [(t, a, b) for t, a, b in words if t and t not in STOPWORDS]
    toks = [t for t, _, _ in words]
    spans = []
    for run in runs:
        n = len(run)
        at = next((i for i in range(len(toks) - n + 1) if tuple(toks[i:i + n]) == run), None)
        if at is None:
            return None
        spans.append((words[at][1], words[at + n - 1][2]))
    return spans
