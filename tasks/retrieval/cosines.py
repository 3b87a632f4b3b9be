"""The dense cosine of each retrieved chunk, whatever retriever ranked it.

Hybrid (RRF), BM25 and reranker scores rank well but tell a reader nothing ("0.033" for every top document);
the cosine between the query and the chunk under the store's own embedder does. It is computed for the chunks
already retrieved (k per question), so it costs k dot products per question; the query embeddings are the ones
the search just computed for the same batch (tasks/retrieval/retrievers.py ``embed_queries``), not a second model run.
"""

from __future__ import annotations

import bisect

import pyarrow as pa
import pyarrow.compute as pc
import torch

from storage.store import Store, open_store
from tasks.indexing.embed import EmbedderConfig
from tasks.retrieval.loaded_index import dequantize, embedder_for_store, open_index
from tasks.retrieval.retrievers import embed_queries


def dense_cosines(store: str | Store, queries: list[str], chunk_ids: list[list[str]], embedder: str | None = None,
                  device: str | None = None, matrix_dtype: str | None = None, *,
                  embedder_config: EmbedderConfig | None = None) -> list[list[float]]:
    """``[[cosine of chunk j for query i]]``, parallel to ``chunk_ids``; NaN for a chunk no longer in the index.

    ``embedder_config``: the store's embedder already resolved by the caller (as for ``search``), so its weight
    files are not hashed again for every batch.
    """
    if not queries:
        return []
    store = open_store(store)  # once: on S3 each open is one more GET of index.json
    index = open_index(store, device, matrix_dtype)
    config = embedder_config or embedder_for_store(store, embedder)
    q = embed_queries(config, device, queries).float()  # the search's own embedding when it just ran
    flat = [c for ids in chunk_ids for c in ids]
    rows = pc.index_in(pa.array(flat, type=pa.string()), value_set=index.chunks["chunk_id"]).to_pylist()
    vecs = torch.full((len(flat), q.shape[1]), float("nan"))
    for j, row in enumerate(rows):
        if row is None:
            continue
        s = bisect.bisect_right(index.offsets, row) - 1
        local = row - index.offsets[s]
        scale = index.scales[s]
        vecs[j] = dequantize(index.shards[s][local : local + 1].cpu(),
                             None if scale is None else scale[local : local + 1].cpu())[0]
    out, j = [], 0
    for qi, ids in enumerate(chunk_ids):
        n = len(ids)
        out.append([round(float(v), 6) for v in (vecs[j : j + n] @ q[qi]).tolist()] if n else [])
        j += n
    return out
