"""The answer flow's result table (Parquet) and its typed row, the run config saved beside it, and the parts of a run
in progress."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from storage.atomic import atomic_path, write_json_atomic
from storage.hooks import crash_point

RESULT_SCHEMA = pa.schema(
    [
        ("question_id", pa.string()),
        ("question", pa.string()),
        ("source", pa.string()),
        ("gold_answers", pa.list_(pa.string())),
        ("chunk_ids", pa.list_(pa.string())),
        ("doc_ids", pa.list_(pa.string())),
        ("scores", pa.list_(pa.float32())),
        ("dense_scores", pa.list_(pa.float32())),  # dense cosine of each chunk, whatever retriever ranked it
        ("chunk_texts", pa.list_(pa.string())),
        # Where each chunk is (null without pages) and what the answer cites (tasks/generation/cite.py, issue 12).
        ("page_starts", pa.list_(pa.int32())),
        ("page_ends", pa.list_(pa.int32())),
        ("citations", pa.list_(pa.struct([("passage", pa.int32()), ("chunk_id", pa.string()),
                                          ("doc_id", pa.string()), ("page_start", pa.int32()),
                                          ("page_end", pa.int32()), ("inferred", pa.bool_()),
                                          ("supported", pa.bool_())]))),
        ("no_rag_answer", pa.string()),
        ("rag_answer", pa.string()),  # the final answer (snapped to a passage span when the run snaps)
        ("rag_raw", pa.string()),  # what the generator said, before snapping
        ("answers_differ", pa.bool_()),
        ("generator", pa.string()),
        ("embedder", pa.string()),
        ("retriever", pa.string()),
        ("k", pa.int32()),
        ("retrieve_s", pa.float64()),
        ("generate_s", pa.float64()),
        # The row's evidence: what its answers were computed from (null in tables written before these columns).
        ("store_generation", pa.int64()),  # the store generation it was answered at
        ("chunk_hashes", pa.list_(pa.string())),  # sha256 of each passage's text, in rank order
        ("no_rag_key", pa.string()),  # the answer keys (tasks/generation/keys.py): equal key, equal answer
        ("rag_key", pa.string()),
    ]
)


@dataclass(frozen=True)
class ResultRow:
    """One question of the result table: RESULT_SCHEMA's columns, same names in the same order."""

    question_id: str
    question: str
    source: str
    gold_answers: list[str]
    chunk_ids: list[str]
    doc_ids: list[str]
    scores: list[float]  # the retriever's own (RRF for hybrid, BM25, a reranker's)
    dense_scores: list[float] | None  # None in tables written before the column existed
    chunk_texts: list[str]
    page_starts: list[int | None]
    page_ends: list[int | None]
    citations: list[dict[str, Any]]  # passage, chunk_id, doc_id, page_start/end, inferred, supported (cite.py)
    no_rag_answer: str
    rag_answer: str
    rag_raw: str
    answers_differ: bool
    generator: str
    embedder: str
    retriever: str
    k: int
    retrieve_s: float
    generate_s: float
    store_generation: int | None = None
    chunk_hashes: list[str] | None = None
    no_rag_key: str | None = None
    rag_key: str | None = None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ResultRow:
        """A row read back from a table (columns a table lacks, e.g. ``dense_scores`` in old ones, are None)."""
        return cls(**{f.name: record.get(f.name) for f in fields(cls)})

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


def results_table(rows: Sequence[ResultRow | dict[str, Any]]) -> pa.Table:
    """The rows as a RESULT_SCHEMA table (records of a table read back, e.g. by a benchmark, are taken too)."""
    return pa.Table.from_pylist([r.to_record() if isinstance(r, ResultRow) else r for r in rows], schema=RESULT_SCHEMA)


def write_results(path: str | Path, rows: Sequence[ResultRow | dict[str, Any]], config: dict[str, Any]) -> Path:
    """Write the table atomically, and ``<name>.config.json`` (the run's settings) beside it."""
    path = Path(path).expanduser().resolve()
    table = results_table(rows)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    write_json_atomic(config_path(path), config)
    return path


def read_results(path: str | Path) -> pa.Table:
    return pq.read_table(Path(path).expanduser())


def config_path(results: Path) -> Path:
    return results.with_name(results.stem + ".config.json")


def answer_outputs(results: str | Path) -> list[Path]:
    """Everything an answer run writes for ``results``: the table, its config, its report and its parts folder."""
    from storage.reports.html import report_path

    results = Path(results).expanduser().resolve()
    return [results, config_path(results), report_path(results), ResultParts(results).dir]


class ResultParts:
    """Finished batches of a run in progress, in ``<results>.parts/``, so a killed run resumes where it stopped.

    A part is keyed by the hash of everything that decides its rows (the run's settings, the store generation,
    the batch's questions); a re-run with other settings or a re-indexed store finds no part and redoes the
    batch. Parts are written atomically (a killed write leaves no part) and removed with the final table.
    """

    def __init__(self, results: str | Path):
        results = Path(results).expanduser().resolve()
        self.dir = results.with_name(results.name + ".parts")

    @staticmethod
    def key(settings: dict[str, Any], batch: list[dict[str, Any]]) -> str:
        blob = json.dumps({"settings": settings, "batch": batch}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def get(self, key: str) -> list[ResultRow] | None:
        path = self.dir / f"{key}.parquet"
        try:
            return [ResultRow.from_record(r) for r in pq.read_table(path, schema=RESULT_SCHEMA).to_pylist()]
        except (OSError, pa.ArrowException):
            return None

    def put(self, key: str, rows: Sequence[ResultRow]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.dir / f"{key}.parquet") as tmp:
            pq.write_table(results_table(rows), tmp)
        crash_point("after-result-part")

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
