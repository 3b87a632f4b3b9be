"""Question files for the answer flow: JSONL, CSV or Parquet, one question per row, read as a stream.

A batch run should not die on one bad row among thousands, so rejected rows are collected as messages naming the
file and line (or row) and the rest load. A file that cannot be used at all raises :class:`QuestionFileError`
when it is the only input, and is recorded like a bad row when it is one of several.

Files are read in batches, never whole: a 1 GB question file loaded at once took ~4 GB of memory before the
first question was answered. :class:`QuestionStream` checks every file up front (it exists, its type, its
encoding, its header or schema: what makes a whole file unusable), then yields batches while the flow answers
them; only the ids seen so far are held, to refuse duplicates.
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage.reports.escape import clip_message
from tasks.ingest.jsonl import file_lines, jsonl_rows

SUFFIXES = (".jsonl", ".csv", ".parquet")
# A question, not a document: a 100k-character "question" became a ~20k-token prompt past the generator's context
# and cost 4 minutes and 4.3 GB for a garbage answer. Longer ones are refused as row errors (the rest is answered).
MAX_QUESTION_CHARS = 4000
_SCAN_BYTES = 1 << 20  # the up-front encoding check reads this much at a time


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
    """Every question of ``paths`` at once (see :class:`QuestionStream`): for callers that need the whole list."""
    stream = QuestionStream(paths)
    questions = [q for batch in stream.batches(1024) for q in batch]
    return QuestionLoad(questions, stream.errors)


@dataclass
class QuestionStream:
    """The questions of a file, a folder (its *.jsonl, *.csv, *.parquet, sorted) or a list of both, in batches.

    Ids must be unique across all files; an id defaults to ``<file stem>:<line or row number>``. Construction
    checks every file and raises :class:`QuestionFileError` when the only file, or every file, is unusable;
    :meth:`batches` then reads them. ``errors`` (files and rows refused, in input order) is complete once the
    batches are exhausted; a single file with no valid row raises there, before its first batch.
    """

    paths: str | Path | Iterable[str | Path]
    errors: list[str] = field(default_factory=list)
    count: int = 0  # questions yielded so far
    _files: list[tuple[Path, str | None]] = field(default_factory=list, repr=False)  # (file, why unusable)

    def __post_init__(self) -> None:
        items = [self.paths] if isinstance(self.paths, (str, Path)) else list(self.paths)
        for item in items:
            p = Path(item).expanduser().absolute()
            if p.is_dir():
                found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in SUFFIXES)
                if not found:
                    self._files.append((p, f"{p}: folder has no question files ({', '.join(SUFFIXES)})"))
                self._files.extend((f, _problem(f)) for f in found)
            else:
                self._files.append((p, _problem(p)))
        problems = [why for _, why in self._files if why]
        if len(self._files) == 1 and problems:
            raise QuestionFileError(problems[0])
        if len(problems) == len(self._files):
            raise QuestionFileError("no questions loaded:\n" + "\n".join(problems or ["no question files given"]))

    def batches(self, size: int) -> Iterator[list[Question]]:
        """Batches of up to ``size`` questions, in file and row order, read as they are taken."""
        batch: list[Question] = []
        for q in self._questions():
            batch.append(q)
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _questions(self) -> Iterator[Question]:
        single = len(self._files) == 1
        first_seen: dict[str, str] = {}
        for path, problem in self._files:
            if problem:
                self.errors.append(clip_message(problem))
                continue
            got = rejected = 0
            mark = len(self.errors)
            try:
                for n, where, fields in _rows(path):
                    loc = f"{path}:{n}" if where == "line" else f"{path}, row {n}"
                    try:
                        if isinstance(fields, str):
                            raise _RowError(fields)
                        q = _question(fields, default_id=f"{path.stem}:{n}", source=str(path))
                        if q.id in first_seen:
                            raise _RowError(f"duplicate id {q.id!r} (first at {first_seen[q.id]})")
                    except _RowError as exc:
                        self.errors.append(clip_message(f"{loc}: {exc}"))
                        rejected += 1
                        continue
                    first_seen[q.id] = loc
                    got += 1
                    self.count += 1
                    yield q
            except QuestionFileError as exc:  # unreadable part-way: what was read stands, the rest is refused
                self.errors.append(clip_message(str(exc)))
            if got == 0:
                problem = f"{path}: no valid questions" + (f" ({rejected} rows rejected)" if rejected else "")
                if single:
                    raise QuestionFileError("\n".join([clip_message(problem), *self.errors[mark:]]))
                self.errors.append(problem)
        if self.count == 0:
            raise QuestionFileError("no questions loaded:\n" + "\n".join(self.errors or ["no question files given"]))


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


def _problem(path: Path) -> str | None:
    """Why ``path`` cannot be used at all, or None: read in bounded pieces, so a huge file costs time, not memory."""
    suffix = path.suffix.lower()
    if not path.exists():
        return f"{path}: no such file"
    if not path.is_file():
        return f"{path}: not a file"
    if suffix not in SUFFIXES:
        return f"{path}: unknown extension {path.suffix or '(none)'!r} (expected {', '.join(SUFFIXES)})"
    try:
        if suffix == ".parquet":
            _parquet_columns(path)
            return None
        _check_text(path)
        if suffix == ".csv":
            _csv_header(path)
    except QuestionFileError as exc:
        return str(exc)
    return None


def _check_text(path: Path) -> None:
    """UTF-8 (a BOM allowed), no NUL byte, not blank: checked over the whole file before any row is used."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    offset = lines = 0
    blank = True
    try:
        with path.open("rb") as f:
            while chunk := f.read(_SCAN_BYTES):
                if b"\x00" in chunk:
                    raise QuestionFileError(f"{path}: binary file (contains NUL bytes), expected UTF-8 text")
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as exc:
                    held = len(exc.object) - len(chunk)  # bytes of a character begun in the chunk before
                    line = lines + exc.object[: exc.start].count(b"\n") + 1
                    raise QuestionFileError(f"{path}:{line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} "
                                            f"at offset {offset - held + exc.start})") from None
                blank = blank and not chunk.strip()
                offset += len(chunk)
                lines += chunk.count(b"\n")
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise QuestionFileError(f"{path}: not UTF-8 text (ends inside a character)") from None
    except OSError as exc:
        raise QuestionFileError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if blank:
        raise QuestionFileError(f"{path}: empty file")


def _rows(path: Path) -> Iterator[_Row]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parquet_rows(path)
    return _jsonl_rows(path) if suffix == ".jsonl" else _csv_rows(path)


def _jsonl_rows(path: Path) -> Iterator[_Row]:
    with path.open("rb") as f:
        for row in jsonl_rows(file_lines(f)):
            yield row.n, "line", row.obj if row.obj is not None else (row.problem or "")


def _csv_header(path: Path) -> None:
    """Raise unless the first non-blank record is a header with a 'question' column."""
    for _ in _csv_rows(path, header_only=True):
        pass


def _csv_rows(path: Path, header_only: bool = False) -> Iterator[_Row]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
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
                    if header_only:
                        return
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


def _parquet_columns(path: Path) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = pq.ParquetFile(path).schema_arrow.names
    except (pa.ArrowException, OSError) as exc:
        raise QuestionFileError(f"{path}: not a readable Parquet file ({exc})") from None
    if "question" not in names:
        raise QuestionFileError(f"{path}: no 'question' column (columns: {', '.join(names)})")
    return [c for c in ("id", "question", "answers") if c in names]


def _parquet_rows(path: Path) -> Iterator[_Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024, columns=_parquet_columns(path)):
            for row in batch.to_pylist():
                n += 1
                yield n, "row", row
    except (pa.ArrowException, OSError) as exc:
        raise QuestionFileError(f"{path}, row {n + 1}: not a readable Parquet file ({exc})") from None
