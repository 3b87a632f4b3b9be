"""BM25 over the live chunks with tantivy (a well-kept engine; no hand-written BM25), and RRF fusion.

The BM25 index is derived data: it is built from the committed generation's live chunk rows, so it can
never disagree with the dense index (same row numbers, same tombstones).
"""

from __future__ import annotations

import re

import pyarrow as pa
import tantivy
import torch

_WORD = re.compile(r"\w+", re.UNICODE)


class BM25Index:
    """tantivy in RAM, English stemming, default BM25 parameters (k1=1.2, b=0.75)."""

    def __init__(self, texts: list[str], tokenizer: str = "en_stem"):
        sb = tantivy.SchemaBuilder()
        sb.add_integer_field("row", stored=True, indexed=True, fast=True)
        sb.add_text_field("body", stored=False, tokenizer_name=tokenizer)
        self.index = tantivy.Index(sb.build())
        writer = self.index.writer(heap_size=64_000_000, num_threads=1)
        for i, text in enumerate(texts):
            doc = tantivy.Document()
            doc.add_integer("row", i)
            doc.add_text("body", text)
            writer.add_document(doc)
        writer.commit()
        writer.wait_merging_threads()
        self.index.reload()
        self.rows = len(texts)

    def search(self, queries: list[str], k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k rows and BM25 scores per query; rows with no matching term are absent (-1 / -inf pad)."""
        k = min(k, self.rows)
        rows = torch.full((len(queries), k), -1, dtype=torch.long)
        scores = torch.full((len(queries), k), float("-inf"))
        searcher = self.index.searcher()
        for qi, q in enumerate(queries):
            words = _WORD.findall(q.lower())
            if not words or k == 0:
                continue
            query = self.index.parse_query(" ".join(words), ["body"])
            hits = searcher.search(query, k).hits
            # Order by score, then row, so ties do not depend on segment layout.
            found = sorted(((float(s), searcher.doc(a)["row"][0]) for s, a in hits), key=lambda t: (-t[0], t[1]))
            for j, (s, r) in enumerate(found):
                rows[qi, j], scores[qi, j] = r, s
        return rows, scores


def build_bm25(chunks: pa.Table) -> BM25Index:
    return BM25Index(chunks["text"].to_pylist())


def rrf_fuse(
    rankings: list[torch.Tensor], k: int, rrf_k: int = 60, weights: list[float] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reciprocal rank fusion: score(row) = Σ_i w_i / (rrf_k + rank_i(row)), ranks from 1; -1 rows ignored.

    Ties are broken by the best rank any list gave the row, then by row number. No row appears twice.
    """
    weights = weights or [1.0] * len(rankings)
    nq = rankings[0].shape[0]
    out_rows = torch.full((nq, k), -1, dtype=torch.long)
    out_scores = torch.full((nq, k), float("-inf"))
    for qi in range(nq):
        acc: dict[int, float] = {}
        best: dict[int, int] = {}
        for w, ranking in zip(weights, rankings, strict=True):
            for rank, row in enumerate(ranking[qi].tolist(), 1):
                if row < 0:
                    continue
                acc[row] = acc.get(row, 0.0) + w / (rrf_k + rank)
                best[row] = min(best.get(row, rank), rank)
        fused = sorted(acc, key=lambda r: (-acc[r], best[r], r))[:k]
        for j, row in enumerate(fused):
            out_rows[qi, j], out_scores[qi, j] = row, acc[row]
    return out_rows, out_scores
