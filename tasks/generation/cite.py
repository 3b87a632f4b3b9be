"""Citations of a RAG answer: the passage numbers the model wrote, or, when it wrote none, the retrieved
chunks that hold the answer, flagged as inferred. Pure functions: the answer flow passes the hits in, the result
table stores what comes out.

A passage *holds* an answer when every phrase the answer claims is in it word for word, numbers whole
(:func:`tasks.text.holding_spans`): "15 trillion" is not held by a passage saying "2 trillion", and "1.5 billion"
is not "15 billion". Half the answer's words in a passage used to be enough, and cited passages that did not hold
the answer (issue 24). A mark the model wrote is kept, but checked the same way: one pointing at a passage that
does not hold the answer is stored with ``supported = False`` and shown as unsupported, never silently.

A citation names the page(s) of the span that holds the answer, not the chunk's whole range: a chunk of a PDF
may cross pages, and ``page_breaks`` (the offsets in its text where each next page begins) places the span.
"""

from __future__ import annotations

import bisect
import re
from typing import Any

from tasks.text import holding_spans

_MARK = re.compile(r"\[\s*(\d+(?:\s*[,;]\s*\d+)*)\s*\]")  # [2], [1, 3], [1;3]
_TRAILING = re.compile(r"(?:\s*\(?\s*(?:passages?|sources?)?\s*" + _MARK.pattern + r"\s*\)?)+\s*[.]?\s*$", re.I)


def split_citations(answer: str, n_passages: int) -> tuple[str, list[int]]:
    """(the answer without its citation marks, the cited 1-based passage numbers in order, each once).

    Numbers outside ``1..n_passages`` are dropped from the list (a model citing passage 9 of 5 cites
    nothing real) but their marks are still removed from the text.
    """
    cited: list[int] = []
    for m in _MARK.finditer(answer):
        for part in re.split(r"[,;]", m.group(1)):
            n = int(part)
            if 1 <= n <= n_passages and n not in cited:
                cited.append(n)
    text = _TRAILING.sub("", answer)
    text = _MARK.sub("", text)
    return " ".join(text.split()).rstrip(" ,;"), cited


def span_pages(spans: list[tuple[int, int]], page_start: int | None, page_end: int | None,
               breaks: list[int] | None) -> tuple[int | None, int | None]:
    """The pages of ``spans`` (offsets in a chunk's text) in a chunk on ``page_start``..``page_end`` whose next
    pages begin at ``breaks``; the chunk's own range when it has no breaks (one page, or a store indexed before
    they were recorded)."""
    if page_start is None or not spans or not breaks:
        return page_start, page_end
    first = page_start + bisect.bisect_right(breaks, min(s for s, _ in spans))
    last = page_start + bisect.bisect_right(breaks, max(e for _, e in spans) - 1)
    return first, last


def citations(answer: str, cited: list[int], chunk_ids: list[str], doc_ids: list[str], texts: list[str],
              page_starts: list[int | None], page_ends: list[int | None], question: str = "",
              page_breaks: list[list[int] | None] | None = None) -> list[dict[str, Any]]:
    """The answer's citations as rows of the result table's ``citations`` column.

    ``cited``: passage numbers the model wrote (see :func:`split_citations`), each checked: ``supported`` says
    whether the passage holds the answer. Without any, the passages that hold the answer are cited in rank order,
    ``inferred=True``; an answer no passage holds (or an empty one) cites nothing. ``question``: its words
    restated in the answer are not claims (:func:`tasks.text.claims`).
    """
    inferred = not cited
    if inferred and not answer.strip():
        return []
    held = [holding_spans(answer, t, question) for t in texts]
    if inferred:
        cited = [i + 1 for i, spans in enumerate(held) if spans is not None]
    out = []
    for n in cited:
        spans = held[n - 1]
        p0 = page_starts[n - 1] if page_starts else None
        p1 = page_ends[n - 1] if page_ends else None
        if spans is not None:
            p0, p1 = span_pages(spans, p0, p1, page_breaks[n - 1] if page_breaks else None)
        out.append({"passage": n, "chunk_id": chunk_ids[n - 1], "doc_id": doc_ids[n - 1], "page_start": p0,
                    "page_end": p1, "inferred": inferred, "supported": spans is not None})
    return out


def cite_columns(raw: str, answer: str, hit: Any) -> dict[str, Any]:
    """The result table's ``citations``, ``page_starts`` and ``page_ends`` for one question.

    ``raw``: what the model said (its ``[n]`` marks are the citations); ``answer``: the final answer, which
    a cited passage must hold; ``hit``: its retrieved chunks (tasks/retrieval/search.py ``SearchResult``; its
    ``query`` is the question).
    """
    pages = getattr(hit, "pages", None) or [(None, None)] * len(hit.chunk_ids)
    starts, ends = [p[0] for p in pages], [p[1] for p in pages]
    _, cited = split_citations(raw, len(hit.chunk_ids))
    return {"citations": citations(answer, cited, hit.chunk_ids, hit.doc_ids, hit.texts, starts, ends,
                                   getattr(hit, "query", "") or "", getattr(hit, "page_breaks", None)),
            "page_starts": starts, "page_ends": ends}


def strip_citations(answers: list[str], hits: list[Any]) -> list[str]:
    """The answers without their citation marks (what is scored, snapped and shown as the answer)."""
    return [split_citations(a, len(h.chunk_ids))[0] for a, h in zip(answers, hits, strict=True)]
