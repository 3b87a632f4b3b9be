"""The answer flow's result table (Parquet) and the run config saved beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from storage.atomic import atomic_path, write_json_atomic

RESULT_SCHEMA = pa.schema(
    [
        ("question_id", pa.string()),
        ("question", pa.string()),
        ("source", pa.string()),
        ("gold_answers", pa.list_(pa.string())),
        ("chunk_ids", pa.list_(pa.string())),
        ("doc_ids", pa.list_(pa.string())),
        ("scores", pa.list_(pa.float32())),
        ("chunk_texts", pa.list_(pa.string())),
        ("no_rag_answer", pa.string()),
        ("rag_answer", pa.string()),
        ("answers_differ", pa.bool_()),
        ("generator", pa.string()),
        ("embedder", pa.string()),
        ("retriever", pa.string()),
        ("k", pa.int32()),
        ("retrieve_s", pa.float64()),
        ("generate_s", pa.float64()),
    ]
)


def write_results(path: str | Path, rows: list[dict[str, Any]], config: dict[str, Any]) -> Path:
    """Write the table atomically, and ``<name>.config.json`` (the run's settings) beside it."""
    path = Path(path).expanduser().resolve()
    table = pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    write_json_atomic(config_path(path), config)
    return path


def read_results(path: str | Path) -> pa.Table:
    return pq.read_table(Path(path).expanduser())


def config_path(results: Path) -> Path:
    return results.with_name(results.stem + ".config.json")
