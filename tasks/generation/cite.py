"""Citations of a RAG answer: the passage numbers the model wrote, or, when it wrote none, the retrieved
chunks whose text supports the answer (the faithfulness support measure of tasks/evaluation/metrics.py), flagged as
inferred. Pure functions: the answer flow passes the hits in, the result table stores what comes out.
"""

from __future__ import annotations

import re
from typing import Any

from tasks.text import support

_MARK = re.compile(r"\[\s*(\d+(?:\s*[,;]\s*\d+)*)\s*\]")  # [2], [1, 3], [1;3]
_TRAILING = re.compile(r"(?:\s*\(?\s*(?:passages?|sources?)?\s*" + _MARK.pattern + r"\s*\)?)+\s*[.]?\s*$", re.I)
# the verdicts' threshold (tasks/evaluation/evaluate.py): a chunk supports an answer at ≥ half its tokens
SUPPORT_MIN = 0.5


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


def citations(answer: str, cited: list[int], chunk_ids: list[str], doc_ids: list[str], texts: list[str],
              page_starts: list[int | None], page_ends: list[int | None]) -> list[dict[str, Any]]:
    """The answer's citations as rows of the result table's ``citations`` column.

    ``cited``: passage numbers the model wrote (see :func:`split_citations`). Without any, the passages whose
    text supports the answer (≥ ``SUPPORT_MIN``) are cited, best supported first, ``inferred=True``; an
    answer no passage supports (or an empty one) cites nothing.
    """
    inferred = not cited
    if inferred:
        if not answer.strip():
            return []
        scored = [(support(answer, t), i + 1) for i, t in enumerate(texts)]
        cited = [n for s, n in sorted(scored, key=lambda x: (-x[0], x[1])) if s >= SUPPORT_MIN]
    return [{"passage": n, "chunk_id": chunk_ids[n - 1], "doc_id": doc_ids[n - 1],
             "page_start": page_starts[n - 1] if page_starts else None,
             "page_end": page_ends[n - 1] if page_ends else None, "inferred": inferred} for n in cited]


def cite_columns(raw: str, answer: str, hit: Any) -> dict[str, Any]:
    """The result table's ``citations``, ``page_starts`` and ``page_ends`` for one question.

    ``raw``: what the model said (its ``[n]`` marks are the citations); ``answer``: the final answer, which
    the inferred citations must support; ``hit``: its retrieved chunks (tasks/retrieval/search.py ``SearchResult``).
    """
    pages = getattr(hit, "pages", None) or [(None, None)] * len(hit.chunk_ids)
    starts, ends = [p[0] for p in pages], [p[1] for p in pages]
    _, cited = split_citations(raw, len(hit.chunk_ids))
    return {"citations": citations(answer, cited, hit.chunk_ids, hit.doc_ids, hit.texts, starts, ends),
            "page_starts": starts, "page_ends": ends}


def strip_citations(answers: list[str], hits: list[Any]) -> list[str]:
    """The answers without their citation marks (what is scored, snapped and shown as the answer)."""
    return [split_citations(a, len(h.chunk_ids))[0] for a, h in zip(answers, hits, strict=True)]
