"""What a retrieval backend is: ``search(queries, k) -> Hits`` over the rows of one loaded store generation.

There are three, one per file: exact dense (tasks/retrieval/backends/dense.py), FAISS HNSW
(tasks/retrieval/backends/ann.py) and tantivy BM25
(tasks/retrieval/backends/bm25.py). Dense backends take query embeddings and BM25 takes the query text;
``query_kind`` says
which, so one retriever class drives all three (tasks/retrieval/retrievers.py) and none of them embeds queries itself.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, Protocol

import torch

QueryKind = Literal["vector", "text"]


class Hits(NamedTuple):
    """Top-k results for a batch of queries: ``rows`` index the loaded generation's ``chunks`` table.

    A row is -1 (score -inf) where fewer than k rows match; no row appears twice in a query's list.
    """

    rows: torch.Tensor  # [n_queries, k] int64
    scores: torch.Tensor  # [n_queries, k] float32, descending


class Backend(Protocol):
    """One way of ranking the live rows."""

    query_kind: QueryKind  # "vector": ``search`` takes a [n, dim] tensor of unit query embeddings; "text": strings

    @property
    def rows(self) -> int: ...

    def search(self, queries: Any, k: int) -> Hits: ...


def empty_hits(n_queries: int) -> Hits:
    """No results for any query (k = 0 or an empty index)."""
    return Hits(torch.empty(n_queries, 0, dtype=torch.long), torch.empty(n_queries, 0))
