"""Snap a RAG answer to the shortest span of its passages that still answers: a cheap extractive post-step.

Small generators copy the right passage but say too much ("Levi's Stadium in Santa Clara, California" where
SQuAD's answer is "Levi's Stadium"), or restate the question first ("Super Bowl 50 was played at Levi's
Stadium"). Both cost exact match though the model found the answer. The post-step only ever *shortens* an
answer to a span that occurs word for word in a passage, so it cannot invent anything; whether it is kept
on is decided by measurement (``benchmarks/prompts.py``), and the raw output stays in the result table.
"""

from __future__ import annotations

import re

from tasks.text import STOPWORDS, normalize_word, support_tokens

# Words at which an over-long answer is cut, keeping what comes before: a trailing place, time or clause.
CUT_WORDS = ("in", "at", "on", "near", "from", "during", "which", "who", "that", "where", "when", "because")
# Commas are not cut marks: "February 7, 2016" and "Santa Clara, California" are whole answers.
CUT_MARKS = (";", "(", " - ", " – ", ":")
_COPULA = re.compile(r"\b(?:is|are|was|were|has been|had been|will be)\b", re.I)


def _in_passages(span: str, passages: list[str]) -> bool:
    """``span`` occurs word for word in a passage (``passages`` already :func:`_normal`), numbers whole."""
    norm = _normal(span)
    return bool(norm) and any(f" {norm} " in f" {p} " for p in passages)


def _normal(text: str) -> str:
    return " ".join(support_tokens(text))


def _has_content(span: str, question_words: set[str]) -> bool:
    """A word that is neither a stopword nor the question's own: SQuAD answers rarely repeat the question."""
    return any(t not in STOPWORDS and t not in question_words for t in support_tokens(span))


def _restatement_cut(answer: str, question_words: set[str]) -> str | None:
    """``"Super Bowl 50 was played at Levi's Stadium"`` → ``"Levi's Stadium"``.

    Drops a leading restatement of the question: everything up to the first copula when the words before
    it are mostly the question's own, then any leading words that are the question's or stopwords.
    """
    m = _COPULA.search(answer)
    if not m or m.start() == 0:
        return None
    head = support_tokens(answer[: m.start()])
    if not head or sum(t in question_words for t in head) / len(head) < 0.6:
        return None
    words = answer[m.end():].split()
    while words and (normalize_word(words[0]) in question_words or normalize_word(words[0]) in STOPWORDS):
        words.pop(0)
    return " ".join(words).strip(" ,.") or None


def snap_answer(answer: str, question: str, passages: list[str]) -> str:
    """The shortest leading span of ``answer`` (after a restated question is dropped) found in ``passages``.

    Candidates are the answer itself and its prefixes ending before a cut mark or cut word; the shortest one
    that has a content word and occurs verbatim in some passage wins (number-aware: "1.5" is not found as "15").
    An answer with no such span is returned unchanged.
    """
    text = " ".join(answer.split()).strip()
    if not text or not passages:
        return answer
    norm_passages = [_normal(p) for p in passages]
    question_words = set(support_tokens(question))
    candidates = [text]
    rest = _restatement_cut(text, question_words)
    if rest:
        candidates.append(rest)
    prefixes: list[str] = []
    for cand in candidates:
        cuts = [m.start() for mark in CUT_MARKS for m in re.finditer(re.escape(mark), cand)]
        cuts += [m.start() for w in CUT_WORDS for m in re.finditer(rf"\s{w}\s", cand, re.I)]
        prefixes += [cand[:c].strip(" ,.;:") for c in cuts if c > 0]
    best = None
    for span in candidates + prefixes:
        span = span.strip(" .")
        shorter = best is None or len(span) < len(best)
        if shorter and _has_content(span, question_words) and _in_passages(span, norm_passages):
            best = span
    return best if best is not None else answer
