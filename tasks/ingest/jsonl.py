"""The one JSONL row reader: documents (loaders/text.py), question files (questions.py) and eval data sets
(evaluation/datasets.py) all read their lines through it, so one line is parsed and refused the same way.

A line is read with a byte cap (a runaway line costs a row error, not its size in memory), decoded as UTF-8 (a
BOM on the first line is dropped), and parsed; blank lines are skipped. Each row comes back as its line number,
its text, and the JSON object or why there is none.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import IO, Any

MAX_LINE_BYTES = 1 << 20  # a question, a document's record: many times over


class JsonlRow:
    """Line ``n`` of a JSONL file: ``text`` as it stands, and ``obj`` (the object) or ``problem`` (why not)."""

    __slots__ = ("n", "obj", "problem", "text")

    def __init__(self, n: int, text: str, obj: dict[str, Any] | None, problem: str | None) -> None:
        self.n, self.text, self.obj, self.problem = n, text, obj, problem


def jsonl_rows(lines: Iterable[bytes]) -> Iterator[JsonlRow]:
    """Rows of ``lines``: raw lines, with or without their newline, from :func:`file_lines` or
    :func:`bytes_lines` (which mark a line over :data:`MAX_LINE_BYTES`: a row problem here)."""
    for n, line in enumerate(lines, 1):
        if line is _TOO_LONG:
            yield JsonlRow(n, "", None, f"line longer than {MAX_LINE_BYTES} bytes")
            continue
        try:
            text = line.decode("utf-8-sig" if n == 1 else "utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            yield JsonlRow(n, "", None, f"not UTF-8 text (byte 0x{line[exc.start]:02x})")
            continue
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            yield JsonlRow(n, text, None, f"invalid JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(obj, dict):
            kind = {list: "a list", bool: "a boolean"}.get(type(obj), type(obj).__name__)
            yield JsonlRow(n, text, None, f"expected a JSON object, got {kind}")
            continue
        yield JsonlRow(n, text, obj, None)


_TOO_LONG = b"\x00too long\x00"  # a sentinel: never a real line (JSONL text holds no NUL byte)


def file_lines(f: IO[bytes]) -> Iterator[bytes]:
    """The lines of an open binary file, each read with the cap; a longer line is skipped to its end."""
    while line := f.readline(MAX_LINE_BYTES + 1):
        if len(line) > MAX_LINE_BYTES:
            while not line.endswith(b"\n") and (line := f.readline(MAX_LINE_BYTES)):
                pass  # skip to the line's end without holding it
            yield _TOO_LONG
            continue
        yield line


def bytes_lines(raw: bytes) -> Iterator[bytes]:
    """The lines of a file already in memory (a document: its bytes are hashed anyway), with the same cap."""
    for line in raw.split(b"\n"):
        yield _TOO_LONG if len(line) > MAX_LINE_BYTES else line
