"""What the report marks in text: the word diff of two answers, the passage span supporting an answer, gold spans.

Token-level on purpose and with the same tokens as faithfulness (:func:`tasks.text.support`): a passage word
counts when its number-aware normal form (:func:`tasks.text.normalize_word`: "1.5" stays "1.5", "4,096" is
"4096") is one of the answer's content tokens, so a highlighted span is exactly what the faithfulness number
counted. Every function returns character offsets into the text it was given and
never alters the text, so the renderer can escape it as is.
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher
from functools import lru_cache

from tasks.text import content_tokens, normalize_answer, normalize_word, support_tokens

_WORD = re.compile(r"\S+")

Span = tuple[int, int]  # [start, end) character offsets


_norm = normalize_word  # number-aware (tasks/text.py): the highlights are the support that faithfulness counts


@lru_cache(maxsize=4096)
def _parsed(text: str) -> tuple[tuple[str, ...], list[Span]]:
    """The normalized form and the offsets of each whitespace-separated word of ``text``. Cached: a report looks
    at the same passage several times (support, spans) and questions share passages."""
    spans = [m.span() for m in _WORD.finditer(text)]
    parts = text.split()  # the same words (both split on str.isspace()), found in C
    if len(parts) != len(spans):  # pragma: no cover - a safety net, never seen
        parts = [text[s:e] for s, e in spans]
    return tuple(map(_norm, parts)), spans


def words(text: str) -> list[tuple[str, int, int]]:
    """Whitespace-separated words with their normalized form and offsets: ``(norm, start, end)``.

    A word normalizes to one token or to "" (punctuation, an article), exactly as ``support_tokens`` treats
    the same word inside a whole text, so the tokens of a text are its words' tokens.
    """
    norms, spans = _parsed(text)
    return [(n, s, e) for n, (s, e) in zip(norms, spans, strict=True)]


@lru_cache(maxsize=4096)
def _tokens(text: str) -> tuple[list[int], tuple[str, ...], frozenset[str]]:
    """Positions of the words of ``text`` that have a token, those tokens in order, and the set of them."""
    norms, _ = _parsed(text)
    pos = [i for i, n in enumerate(norms) if n]
    toks = tuple(norms[i] for i in pos)
    return pos, toks, frozenset(toks)


def tokens(text: str) -> frozenset[str]:
    """The set of normalized tokens of ``text`` (what :func:`tasks.evaluation.metrics.support` looks answers up in)."""
    return _tokens(text)[2]


def support_in(answer_tokens: list[str], context: frozenset[str]) -> float:
    """:func:`tasks.evaluation.metrics.support` from an answer's content tokens and a context's token set (1.0 with
    none)."""
    if not answer_tokens:
        return 1.0
    return sum(t in context for t in answer_tokens) / len(answer_tokens)


def word_diff(before: str, after: str) -> list[tuple[str, str]]:
    """Word-level diff of two answers: ``[(op, text)]`` with op ``=`` (kept), ``-`` (removed), ``+`` (added).

    Words are compared by their normalized form (so "Paris." equals "paris"), shown as written in ``after`` for
    kept words. Answers are short (tens of words), so difflib's worst case does not matter.
    """
    a, b = before.split(), after.split()
    key = [normalize_answer(w) or w for w in a], [normalize_answer(w) or w for w in b]
    out: list[tuple[str, str]] = []
    for op, i1, i2, j1, j2 in SequenceMatcher(None, *key, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(("=", " ".join(b[j1:j2])))
            continue
        if i2 > i1:
            out.append(("-", " ".join(a[i1:i2])))
        if j2 > j1:
            out.append(("+", " ".join(b[j1:j2])))
    return out


def support_spans(answer: str, passage: str) -> list[Span]:
    """Where ``passage`` supports ``answer``: the shortest window of words holding every answer content token the
    passage has (one span), or, when that window is long (the tokens are scattered), each run of matching words.

    Empty when the passage has none of the answer's content tokens.
    """
    wanted = set(content_tokens(answer))
    if not wanted or wanted.isdisjoint(_tokens(passage)[2]):
        return []
    norms, spans = _parsed(passage)
    hit = [i for i, n in enumerate(norms) if n in wanted]
    window = _min_window(norms, hit, {norms[i] for i in hit})
    limit = max(2 * len(wanted), len(wanted) + 8)
    if window is not None and window[1] - window[0] + 1 <= limit:
        return [(spans[window[0]][0], spans[window[1]][1])]
    return _runs(spans, hit)


def gold_spans(golds: list[str] | tuple[str, ...], passage: str) -> list[Span]:
    """Every occurrence of a gold answer in ``passage`` at token level (normalized words in sequence)."""
    pos, norms, present = _tokens(passage)
    offsets = _parsed(passage)[1]
    spans: set[Span] = set()
    for g in golds:
        toks = tuple(support_tokens(g))
        n = len(toks)
        if not n or any(t not in present for t in toks):
            continue
        for i, t in enumerate(norms):
            if t == toks[0] and norms[i : i + n] == toks:
                spans.add((offsets[pos[i]][0], offsets[pos[i + n - 1]][1]))
    return sorted(spans)


def segments(text: str, marks: dict[str, list[Span]]) -> list[tuple[str, frozenset[str]]]:
    """``text`` cut at every mark boundary: ``[(piece, kinds)]`` where kinds names the marks covering the piece.

    Used by the terminal view; the HTML report does the same cut in the browser from the offsets.
    """
    cuts = {0, len(text)}
    for spans in marks.values():
        for s, e in spans:
            cuts.update((max(0, min(s, len(text))), max(0, min(e, len(text)))))
    points = sorted(cuts)
    out = []
    for s, e in zip(points, points[1:], strict=False):
        if e > s:
            kinds = frozenset(k for k, spans in marks.items() if any(a <= s and e <= b for a, b in spans))
            out.append((text[s:e], kinds))
    return out


def _min_window(norms: tuple[str, ...], hit: list[int], need: set[str]) -> tuple[int, int] | None:
    """The shortest [first, last] word window over ``hit`` positions containing every token in ``need`` (linear)."""
    count: dict[str, int] = {}
    have, best, lo = 0, None, 0
    for hi in range(len(hit)):
        t = norms[hit[hi]]
        count[t] = count.get(t, 0) + 1
        have += count[t] == 1
        while have == len(need):
            if best is None or hit[hi] - hit[lo] < best[1] - best[0]:
                best = (hit[lo], hit[hi])
            t0 = norms[hit[lo]]
            count[t0] -= 1
            have -= count[t0] == 0
            lo += 1
    return best


def _runs(spans_of: list[Span], hit: list[int]) -> list[Span]:
    """Consecutive matching words merged into one span each."""
    spans: list[Span] = []
    prev = -2
    for i in hit:
        if i == prev + 1:
            spans[-1] = (spans[-1][0], spans_of[i][1])
        else:
            spans.append(spans_of[i])
        prev = i
    return spans
