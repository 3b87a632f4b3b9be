"""Question files for the answer flow: JSONL, CSV or Parquet, one question per row.

A batch run should not die on one bad row among thousands, so rejected rows are collected as
messages naming the file and line (or row) and the rest load. A file that cannot be used at all
raises :class:`QuestionFileError` when it is the only input, and is recorded like a bad row when it
is one of several.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage.escape import clip_message

SUFFIXES = (".jsonl", ".csv", ".parquet")
# A question, not a document: a 100k-character "question" became a ~20k-token prompt past the generator's context
# and cost 4 minutes and 4.3 GB for a garbage answer. Longer ones are refused as row errors (the rest is answered).
MAX_QUESTION_CHARS = 4000


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answers: tuple[str, ...] = ()
    source: str = ""


@dataclass
class QuestionLoad:
    questions: list[Question]
    errors: list[str]


class QuestionFileError(ValueError):
    """A question file (or the whole input) that cannot be used; the message names the file."""


class _RowError(ValueError):
    pass


# (number, "line" or "row", the row's fields or why it could not be parsed at all)
_Row = tuple[int, str, "dict[str, Any] | str"]


def load_questions(paths: str | Path | Iterable[str | Path]) -> QuestionLoad:
    """Load questions from a file, a folder (its *.jsonl, *.csv, *.parquet, sorted) or a list of both.

    Ids must be unique across all files; an id defaults to ``<file stem>:<line or row number>``.
    """
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    errors: list[str] = []
    files: list[Path] = []
    for item in items:
        p = Path(item).expanduser().absolute()
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in SUFFIXES)
            if not found:
                errors.append(f"{p}: folder has no question files ({', '.join(SUFFIXES)})")
            files.extend(found)
        else:
            files.append(p)
    single = len(files) == 1 and not errors

    questions: list[Question] = []
    first_seen: dict[str, str] = {}
    for path in files:
        try:
            rows = _read_rows(path)
        except QuestionFileError as exc:
            if single:
                raise
            errors.append(str(exc))
            continue
        got = 0
        file_errors: list[str] = []
        for n, where, fields in rows:
            loc = f"{path}:{n}" if where == "line" else f"{path}, row {n}"
            try:
                if isinstance(fields, str):
                    raise _RowError(fields)
                q = _question(fields, default_id=f"{path.stem}:{n}", source=str(path))
            except _RowError as exc:
                file_errors.append(f"{loc}: {exc}")
                continue
            if q.id in first_seen:
                file_errors.append(f"{loc}: duplicate id {q.id!r} (first at {first_seen[q.id]})")
                continue
            first_seen[q.id] = loc
            questions.append(q)
            got += 1
        errors.extend(file_errors)
        if got == 0:
            problem = f"{path}: no valid questions" + (f" ({len(file_errors)} rows rejected)" if rows else "")
            if single:
                raise QuestionFileError("\n".join(clip_message(e) for e in [problem, *file_errors]))
            errors.append(problem)
    errors = [clip_message(e) for e in errors]
    if not questions:
        raise QuestionFileError("no questions loaded:\n" + "\n".join(errors or ["no question files given"]))
    return QuestionLoad(questions, errors)


def _question(fields: dict[str, Any], *, default_id: str, source: str) -> Question:
    text = fields.get("question")
    if text is None:
        raise _RowError("missing 'question'")
    if not isinstance(text, str):
        raise _RowError(f"'question' must be a string, got {_kind(text)}")
    if not text.strip():
        raise _RowError("'question' is empty")
    if len(text.strip()) > MAX_QUESTION_CHARS:
        raise _RowError(f"'question' is {len(text.strip())} characters, more than {MAX_QUESTION_CHARS}: a question, "
                        "not a document (put long texts in the indexed folder)")
    qid = fields.get("id")
    if qid is None or (isinstance(qid, str) and not qid.strip()):
        qid = default_id
    elif isinstance(qid, int) and not isinstance(qid, bool):
        qid = str(qid)
    elif isinstance(qid, str):
        qid = qid.strip()
    else:
        raise _RowError(f"'id' must be a string or an integer, got {_kind(qid)}")
    return Question(qid, text.strip(), _answers(fields.get("answers")), source)


def _answers(value: Any) -> tuple[str, ...]:
    """A list of strings, or one string: a JSON list (``["a", "b"]``) or ``a|b`` from a CSV cell."""
    if value is None:
        return ()
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("[") and s.endswith("]"):
            try:
                value = json.loads(s)
            except json.JSONDecodeError as exc:
                raise _RowError(
                    f"'answers' looks like a JSON list but is not valid JSON ({exc.msg})"
                ) from None
        else:
            value = s.split("|")
    if not isinstance(value, (list, tuple)):
        raise _RowError(f"'answers' must be a string or a list of strings, got {_kind(value)}")
    out: list[str] = []
    for a in value:
        if a is None:
            continue
        if not isinstance(a, str):
            raise _RowError(f"'answers' must be a string or a list of strings, got a list holding {_kind(a)}")
        if a.strip():
            out.append(a.strip())
    return tuple(out)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", bool: "a boolean"}.get(type(value), type(value).__name__)


def _read_rows(path: Path) -> list[_Row]:
    suffix = path.suffix.lower()
    if not path.exists():
        raise QuestionFileError(f"{path}: no such file")
    if not path.is_file():
        raise QuestionFileError(f"{path}: not a file")
    if suffix not in SUFFIXES:
        raise QuestionFileError(
            f"{path}: unknown extension {path.suffix or '(none)'!r} (expected {', '.join(SUFFIXES)})"
        )
    if suffix == ".parquet":
        return list(_parquet_rows(path))
    text = _read_text(path)
    return list(_jsonl_rows(text) if suffix == ".jsonl" else _csv_rows(path, text))


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise QuestionFileError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if not raw.strip():
        raise QuestionFileError(f"{path}: empty file")
    if b"\x00" in raw:
        raise QuestionFileError(f"{path}: binary file (contains NUL bytes), expected UTF-8 text")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise QuestionFileError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
        ) from None


def _jsonl_rows(text: str) -> Iterator[_Row]:
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield n, "line", f"invalid JSON ({exc.msg} at column {exc.colno})"
            continue
        if not isinstance(obj, dict):
            yield n, "line", f"expected a JSON object, got {_kind(obj)}"
            continue
        yield n, "line", obj


def _csv_rows(path: Path, text: str) -> Iterator[_Row]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header: list[str] | None = None
        start = 1
        for record in reader:
            if header is None:
                if not any(c.strip() for c in record):
                    start = reader.line_num + 1
                    continue
                header = [c.strip() for c in record]
                if "question" not in header:
                    raise QuestionFileError(
                        f"{path}:{reader.line_num}: no 'question' column (header: {', '.join(header)})"
                    )
                start = reader.line_num + 1
                continue
            n, start = start, reader.line_num + 1  # the line the record starts on
            if not any(c.strip() for c in record):
                continue
            if len(record) > len(header):
                yield n, "line", f"{len(record)} cells but the header has {len(header)}"
                continue
            # Missing trailing cells read as empty (None), like an empty cell.
            yield n, "line", {k: (v if v.strip() else None) for k, v in zip(header, record, strict=False)}
    except csv.Error as exc:
        raise QuestionFileError(f"{path}:{reader.line_num}: not a readable CSV table ({exc})") from None
    if header is None:
        raise QuestionFileError(f"{path}: empty file")


def _parquet_rows(path: Path) -> Iterator[_Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        if "question" not in names:
            raise QuestionFileError(f"{path}: no 'question' column (columns: {', '.join(names)})")
        table = pf.read(columns=[c for c in ("id", "question", "answers") if c in names])
    except (pa.ArrowException, OSError) as exc:
        raise QuestionFileError(f"{path}: not a readable Parquet file ({exc})") from None
    for n, row in enumerate(table.to_pylist(), 1):
        yield n, "row", row
