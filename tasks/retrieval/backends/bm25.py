"""The BM25 backend: tantivy over the live chunks (a well-kept engine; no hand-written BM25).

The index lives beside the shards (storage/store/bm25.py) and follows every commit by document id. A reader uses
it only when it is at exactly the generation the dense index loaded (so both rank the same live chunks);
otherwise (a store written before BM25 was persisted, or a writer killed between its two commits) the
BM25 index is built in memory from the loaded live chunks, with a warning.
"""

from __future__ import annotations

import logging
import re

import pyarrow as pa
import tantivy
import torch

from storage.store.bm25 import DiskBM25, in_memory
from tasks.retrieval.backends.base import Hits, QueryKind

_WORD = re.compile(r"\w+", re.UNICODE)
log = logging.getLogger(__name__)


class BM25Index:
    """tantivy BM25 (English stemming, k1=1.2, b=0.75) whose hits are mapped to the loaded rows by chunk id."""

    query_kind: QueryKind = "text"

    def __init__(self, index: tantivy.Index, searcher: tantivy.Searcher, chunk_ids: list[str], source: str):
        self.index, self.searcher, self.source = index, searcher, source
        self.row_of = {c: i for i, c in enumerate(chunk_ids)}
        self.rows = len(chunk_ids)

    @classmethod
    def from_texts(cls, texts: list[str], tokenizer: str = "en_stem") -> BM25Index:
        """An in-memory index whose rows are the positions in ``texts`` (tests, benchmarks)."""
        ids = [str(i) for i in range(len(texts))]
        index = in_memory(pa.table({"chunk_id": ids, "doc_id": ids, "text": texts}), tokenizer)
        return cls(index, index.searcher(), ids, "memory")

    def search(self, queries: list[str], k: int) -> Hits:
        """Top-k rows and BM25 scores per query; rows with no matching term are absent (-1 / -inf pad)."""
        k = min(k, self.rows)
        rows = torch.full((len(queries), k), -1, dtype=torch.long)
        scores = torch.full((len(queries), k), float("-inf"))
        for qi, q in enumerate(queries):
            words = _WORD.findall(q.lower())
            if not words or k == 0:
                continue
            query = self.index.parse_query(" ".join(words), ["body"])
            hits = self.searcher.search(query, k).hits
            found = [(float(s), self.row_of.get(self.searcher.doc(a)["chunk_id"][0], -1)) for s, a in hits]
            # Order by score, then row, so ties do not depend on segment layout.
            found = sorted(((s, r) for s, r in found if r >= 0), key=lambda t: (-t[0], t[1]))
            for j, (s, r) in enumerate(found):
                rows[qi, j], scores[qi, j] = r, s
        return Hits(rows, scores)


def build_bm25(chunks: pa.Table) -> BM25Index:
    """A BM25 index of these chunk rows, in memory."""
    index = in_memory(chunks)
    return BM25Index(index, index.searcher(), chunks["chunk_id"].to_pylist(), "memory")


def open_bm25(store_root: str, generation: int, chunks: pa.Table) -> BM25Index:
    """The store's on-disk BM25 index when it is at ``generation``; else one built in memory from ``chunks``."""
    found = DiskBM25(store_root).open(generation)
    if found is not None:
        return BM25Index(*found, chunks["chunk_id"].to_pylist(), "disk")
    log.warning("BM25 index of %s is not at generation %d: building it in memory (the next `ragbatch index` "
                "brings the on-disk one up to date)", store_root, generation)
    return build_bm25(chunks)
