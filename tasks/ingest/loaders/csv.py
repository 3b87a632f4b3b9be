"""CSV and TSV through the standard library: one document per row, ``column: value; …``.

Rows are documents, so editing one row re-embeds that row only. The id is ``<file>#row-N`` (N counts data
rows from 1), or the row's ``id`` column when the header has one (the JSONL loader's rules).
"""

from __future__ import annotations

import csv
import hashlib
import io

from tasks.ingest.loaders.base import Document, Loader, LoadError, register
from tasks.ingest.loaders.text import record_id


@register
class CsvLoader(Loader):
    format = "csv"
    suffixes = (".csv", ".tsv")

    def load(self, rel: str, raw: bytes, mtime: float) -> tuple[list[Document], list[str]]:
        delimiter = "\t" if rel.lower().endswith(".tsv") else ","
        reader = csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline=""), delimiter=delimiter)
        try:
            header = [h.strip() for h in next(reader)]
        except (StopIteration, csv.Error) as exc:
            raise LoadError(f"unreadable CSV header ({exc or 'no rows'})") from exc
        if problem := header_problem(header):
            raise LoadError(f"no header row: {problem}; the first row must name the columns")
        keys = [h.lower() for h in header]
        id_col = keys.index("id") if "id" in keys else None
        title_col = keys.index("title") if "title" in keys else None
        docs: list[Document] = []
        errors: list[str] = []
        n = 0
        try:
            for cells in reader:
                if not any(c.strip() for c in cells):
                    continue
                n += 1
                if len(cells) != len(header):
                    errors.append(f"{rel}: line {reader.line_num}: {len(cells)} fields, the header has "
                                  f"{len(header)} (ragged row skipped)")
                    continue
                key, problem = record_id(cells[id_col] if id_col is not None else None, n, "row")
                text = "; ".join(f"{h}: {c.strip()}" for h, c in zip(header, cells, strict=True) if c.strip())
                if problem is None and "\x00" in text:
                    problem = "a cell contains NUL characters"
                if problem:
                    errors.append(f"{rel}: line {reader.line_num}: {problem}")
                    continue
                title = cells[title_col].strip() if title_col is not None else f"{rel} row {n}"
                blob = text.encode()
                docs.append(Document(f"{rel}#{key}", rel, text, hashlib.sha256(blob).hexdigest(), len(blob), mtime,
                                     {"source": rel, "row": n}, self.format, title, row=n))
        except csv.Error as exc:
            errors.append(f"{rel}: line {reader.line_num}: malformed CSV ({exc}); the rows after it were not read")
        if not docs and not errors:
            raise LoadError("no rows under the header")
        return docs, errors


def header_problem(header: list[str]) -> str | None:
    """Why ``header`` looks like data rather than column names (``None`` when it names columns)."""
    if any(not h for h in header):
        return f"an empty column name in {header!r}"
    if len(set(h.lower() for h in header)) != len(header):
        return f"repeated column names in {header!r}"
    for h in header:
        try:
            float(h.replace(",", ""))
        except ValueError:
            continue
        return f"the first row {header!r} holds a number ({h!r})"
    return None
