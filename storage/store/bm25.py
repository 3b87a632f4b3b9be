"""The BM25 index beside the shards: tantivy on disk, kept in step with every commit by document id.

Layout under ``<store>/bm25/``: ``tantivy/`` (the tantivy index), ``docs-<generation>.parquet`` (the
``doc_id``/``sha256`` pairs that generation's commit holds), ``state.json`` (the store generation and the
tantivy commit's opstamp that holds it) and ``format.json`` (schema version, tokenizer).

Each tantivy document is one live chunk (``chunk_id``, ``doc_id``, stemmed ``body``), nothing else, so BM25
statistics count chunks only. Which store generation the index holds is ``state.json``'s, and only while its
opstamp equals the one in tantivy's own ``meta.json`` (written by tantivy's commit): a writer killed between
the tantivy commit and ``state.json`` leaves them unequal, and the index counts as unknown (rebuilt by the
next sync, never used by readers). A reader checks ``meta.json`` before and after opening its searcher, so
the snapshot it searches is exactly the generation it loaded.

:func:`sync` brings the index to a store generation with work proportional to the change: documents that
were removed or changed are deleted by their ``doc_id`` term, added or changed ones are added from their
shard's chunk table, all in one tantivy commit. Every touched document is deleted before it is added, so
replaying a sync after a crash (the docs file written, the tantivy commit not) never duplicates a chunk. A
missing or unreadable index, or one of another format, is rebuilt from the live chunks: it is derived data.

Like Lucene, tantivy keeps counting deleted documents in its BM25 statistics (document frequencies, average
length) until a segment merge drops them, so between compactions scores drift slightly from a fresh build's
(rankings rarely change). Store compaction, which drops the dense index's tombstoned rows, also rebuilds this
index, so after it both hold exactly the live chunks and BM25 scores equal a fresh build's.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import tantivy

from storage.atomic import atomic_path, write_json_atomic

BM25_DIR = "bm25"
FORMAT = {"format": 1, "tokenizer": "en_stem"}
WRITER_HEAP = 64_000_000


def schema(tokenizer: str = "en_stem") -> tantivy.Schema:
    sb = tantivy.SchemaBuilder()
    sb.add_text_field("chunk_id", stored=True, tokenizer_name="raw")
    sb.add_text_field("doc_id", stored=False, tokenizer_name="raw")
    sb.add_text_field("body", stored=False, tokenizer_name=tokenizer)
    return sb.build()


def chunk_document(chunk_id: str, doc_id: str, text: str) -> tantivy.Document:
    doc = tantivy.Document()
    doc.add_text("chunk_id", chunk_id)
    doc.add_text("doc_id", doc_id)
    doc.add_text("body", text)
    return doc


def in_memory(chunks: pa.Table, tokenizer: str = FORMAT["tokenizer"]) -> tantivy.Index:
    """A RAM index of the given chunk rows: for a store whose disk index is behind."""
    index = tantivy.Index(schema(tokenizer))
    writer = index.writer(heap_size=WRITER_HEAP, num_threads=1)
    for c, d, t in zip(chunks["chunk_id"].to_pylist(), chunks["doc_id"].to_pylist(), chunks["text"].to_pylist(),
                       strict=True):
        writer.add_document(chunk_document(c, d, t))
    writer.commit()
    writer.wait_merging_threads()
    index.reload()
    return index


@dataclass
class SyncReport:
    generation: int
    rebuilt: bool = False
    docs_deleted: int = 0
    docs_added: int = 0
    chunks_added: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class DiskBM25:
    """The on-disk BM25 index of one store (see the module docstring)."""

    def __init__(self, store_root: str | Path):
        self.dir = Path(store_root) / BM25_DIR
        self.tantivy_dir = self.dir / "tantivy"

    def _format_ok(self) -> bool:
        try:
            return json.loads((self.dir / "format.json").read_text()) == FORMAT
        except (OSError, ValueError):
            return False

    def _tantivy_opstamp(self) -> int | None:
        try:
            return int(json.loads((self.tantivy_dir / "meta.json").read_text())["opstamp"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _generation(self) -> int | None:
        """The store generation the committed tantivy index holds, or None when unknown."""
        try:
            state = json.loads((self.dir / "state.json").read_text())
        except (OSError, ValueError):
            return None
        if not self._format_ok() or state.get("opstamp") != self._tantivy_opstamp():
            return None
        return state.get("generation")

    def open(self, generation: int) -> tuple[tantivy.Index, tantivy.Searcher] | None:
        """The index and one searcher snapshot, if that snapshot is exactly at ``generation``; else None."""
        before = self._tantivy_opstamp()
        if before is None or self._generation() != generation:
            return None
        try:
            index = tantivy.Index.open(str(self.tantivy_dir))
            searcher = index.searcher()
        except (OSError, ValueError, RuntimeError):
            return None
        # A commit between the two reads could have given the searcher a newer snapshot than the state says.
        if self._tantivy_opstamp() != before or self._generation() != generation:
            return None
        return index, searcher

    def state(self) -> tuple[int | None, int]:
        """(generation of the committed index or None when unknown, number of chunks in it)."""
        found = self.open(gen) if (gen := self._generation()) is not None else None
        return (gen, found[1].num_docs) if found else (None, 0)

    def _indexed_docs(self, generation: int | None) -> dict[str, str] | None:
        if generation is None:
            return None
        try:
            t = pq.read_table(self.dir / f"docs-{generation:06d}.parquet")
        except (OSError, pa.ArrowException):
            return None
        return dict(zip(t["doc_id"].to_pylist(), t["sha256"].to_pylist(), strict=True))

    def sync(self, generation: int, read_manifest: Callable[[], pa.Table], read_chunks: Callable[[str], pa.Table],
             rebuild: bool = False) -> SyncReport:
        """Bring the index to ``generation`` (whose manifest ``read_manifest`` returns); the caller holds the lock.

        Already there (every index run ends with a sync): nothing is opened or read beyond two small JSON files.
        ``rebuild`` re-adds every live chunk into an emptied index instead (see the module docstring).
        """
        t0 = time.perf_counter()
        report = SyncReport(generation)
        current = self._generation()
        if current == generation and not rebuild:
            return report
        index = None
        if self._format_ok():
            try:
                index = tantivy.Index(schema(FORMAT["tokenizer"]), path=str(self.tantivy_dir), reuse=True)
            except (OSError, ValueError, RuntimeError):
                index = None
        if index is None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.tantivy_dir.mkdir(parents=True)
            write_json_atomic(self.dir / "format.json", FORMAT)
            index = tantivy.Index(schema(FORMAT["tokenizer"]), path=str(self.tantivy_dir), reuse=True)
            current = None
        manifest = read_manifest()
        live = dict(zip(manifest["doc_id"].to_pylist(), manifest["sha256"].to_pylist(), strict=True))
        indexed = None if rebuild else self._indexed_docs(current)
        writer = index.writer(heap_size=WRITER_HEAP, num_threads=1)
        if indexed is None:  # nothing known about its content: start over from the live chunks
            report.rebuilt = True
            writer.delete_all_documents()
            indexed = {}
        touched = {d for d, h in indexed.items() if live.get(d) != h}
        added = {d for d, h in live.items() if indexed.get(d) != h}
        with atomic_path(self.dir / f"docs-{generation:06d}.parquet") as tmp:
            pq.write_table(pa.table({"doc_id": list(live), "sha256": list(live.values())}), tmp)
        for d in sorted(touched | added):
            writer.delete_documents_by_term("doc_id", d)
        shards = manifest.filter(pc.is_in(manifest["doc_id"], value_set=pa.array(sorted(added), type=pa.string())))
        for shard in sorted(set(shards["shard"].to_pylist())):
            t = read_chunks(shard)
            for c, d, h, text in zip(t["chunk_id"].to_pylist(), t["doc_id"].to_pylist(),
                                     t["doc_sha256"].to_pylist(), t["text"].to_pylist(), strict=True):
                if d in added and live[d] == h:
                    writer.add_document(chunk_document(c, d, text))
                    report.chunks_added += 1
        opstamp = writer.commit()
        writer.wait_merging_threads()
        write_json_atomic(self.dir / "state.json", {"generation": generation, "opstamp": opstamp})
        for p in self.dir.glob("docs-*.parquet"):
            if p.name != f"docs-{generation:06d}.parquet":
                p.unlink(missing_ok=True)
        report.docs_deleted = len(touched)
        report.docs_added = len(added)
        report.seconds = time.perf_counter() - t0
        return report
