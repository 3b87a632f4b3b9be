"""Token-aware chunking with the embedder's own tokenizer; no chunk is ever longer than it can embed.

Windows of ``chunk_tokens`` tokens with ``overlap_tokens`` overlap are cut at token boundaries, moved
back to a word boundary when that costs little, and then re-tokenized *with* the passage prefix and
special tokens: a window that would exceed the embedder's max length is shrunk until it fits, so
truncation at embedding time cannot happen (the embedder also refuses over-long passages).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from tasks.config import IndexConfig, chunking_problem

if TYPE_CHECKING:
    from tasks.ingest.loaders.base import Document


class ChunkingError(ValueError):
    """Chunk settings that the embedder cannot honour."""


@dataclass(frozen=True)
class ChunkSettings:
    chunk_tokens: int = IndexConfig.chunk_tokens
    overlap_tokens: int = IndexConfig.overlap_tokens

    def __post_init__(self) -> None:
        if problem := chunking_problem(self.chunk_tokens, self.overlap_tokens):
            raise ChunkingError(problem)

    @property
    def key(self) -> str:
        """A short stable id stored in the manifest, so a settings change re-chunks the documents."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Chunk:
    chunk_id: str
    doc_id: str
    doc_sha256: str
    chunk_index: int
    text: str
    char_start: int
    char_end: int
    n_tokens: int
    page_start: int | None = None  # PDF: the pages of char_start and char_end - 1 (a chunk may cross a break)
    page_end: int | None = None
    row: int | None = None  # CSV/TSV: the document's data row
    page_breaks: list[int] | None = None  # offsets in ``text`` where pages page_start + 1 … page_end begin


def content_budget(tokenizer: Any, max_length: int, passage_prefix: str = "") -> int:
    """Tokens of content that fit: max length minus special tokens and the passage prefix."""
    specials = len(tokenizer("", add_special_tokens=True)["input_ids"])
    prefix = len(tokenizer(passage_prefix, add_special_tokens=False)["input_ids"]) if passage_prefix else 0
    return max_length - specials - prefix


def check_settings(settings: ChunkSettings, tokenizer: Any, max_length: int, passage_prefix: str = "") -> None:
    budget = content_budget(tokenizer, max_length, passage_prefix)
    if settings.chunk_tokens > budget:
        raise ChunkingError(
            f"chunk size {settings.chunk_tokens} tokens exceeds what the embedder can take: {budget} tokens "
            f"(max length {max_length} minus special tokens and prefix); use --chunk-tokens {budget} or less"
        )


WINDOW_CHARS = 200_000  # text tokenized at a time: bounds memory on huge documents (issue 10: 50 MB took 5 GB)


def chunk_text(
    doc_id: str,
    doc_sha256: str,
    text: str,
    tokenizer: Any,
    settings: ChunkSettings,
    max_length: int,
    passage_prefix: str = "",
    window_chars: int = WINDOW_CHARS,
) -> list[Chunk]:
    """Chunks of ``text``, tokenized ``window_chars`` at a time so memory stays bounded whatever its size.

    A window ends at whitespace; chunking stops two chunks short of its end and the next window starts
    where the next chunk would have, so the windows give the chunks of one whole-text pass.
    """
    check_settings(settings, tokenizer, max_length, passage_prefix)
    chunks: list[Chunk] = []
    pos = 0
    while pos is not None and pos < len(text):
        wend = _window_end(text, pos, window_chars)
        enc = tokenizer(text[pos:wend], add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets = [(a + pos, b + pos) for a, b in enc["offset_mapping"]]
        pos = _chunk_window(chunks, offsets, wend, wend >= len(text), doc_id, doc_sha256, text, tokenizer,
                            settings, max_length, passage_prefix)
    return chunks


def chunk_document(
    doc: Document, tokenizer: Any, settings: ChunkSettings, max_length: int, passage_prefix: str = ""
) -> list[Chunk]:
    """:func:`chunk_text` of a loaded document, each chunk given the document's location (page span, row)."""
    chunks = chunk_text(doc.doc_id, doc.sha256, doc.text, tokenizer, settings, max_length, passage_prefix)
    for c in chunks:
        c.page_start, c.page_end = doc.page_at(c.char_start), doc.page_at(max(c.char_start, c.char_end - 1))
        if c.page_start is not None and c.page_end is not None and c.page_end > c.page_start:
            c.page_breaks = [doc.page_offsets[p - 1] - c.char_start for p in range(c.page_start + 1, c.page_end + 1)]
        c.row = doc.row
    return chunks


def _window_end(text: str, pos: int, window_chars: int) -> int:
    """End of the window from ``pos``: the first whitespace after ``window_chars`` (or a hard cut further on)."""
    end = pos + window_chars
    if end >= len(text):
        return len(text)
    for i in range(end, min(len(text), end + window_chars)):
        if text[i].isspace():
            return i
    return min(len(text), end + window_chars)


def _chunk_window(
    chunks: list[Chunk], offsets: list[tuple[int, int]], wend: int, last: bool, doc_id: str, doc_sha256: str, text: str,
    tokenizer: Any, settings: ChunkSettings, max_length: int, passage_prefix: str,
) -> int | None:
    """Append the window's chunks; return the char where the next window starts (``None``: text done)."""
    n = len(offsets)
    start = 0
    while start < n:
        if not last and start > 0 and n - start < 2 * settings.chunk_tokens:
            return offsets[start][0]  # too close to the window's end: the next window re-tokenizes from here
        end = min(start + settings.chunk_tokens, n)
        if end < n:
            end = _word_boundary_before(offsets, start, end, slack=max(1, settings.chunk_tokens // 8))
        while True:
            a, b = offsets[start][0], offsets[end - 1][1]
            piece = text[a:b]
            full = len(tokenizer(passage_prefix + piece, add_special_tokens=True, verbose=False)["input_ids"])
            if full <= max_length or end - start <= 1:
                break
            end -= 1  # re-tokenizing a cut word can add a token or two: shrink until it fits
        if full > max_length:
            raise ChunkingError(f"{doc_id}: a single token at char {a} does not fit in {max_length} tokens")
        n_tok = len(tokenizer(piece, add_special_tokens=False, verbose=False)["input_ids"])
        if piece.strip():
            chunks.append(Chunk(f"{doc_id}#{len(chunks)}", doc_id, doc_sha256, len(chunks), piece, a, b, n_tok))
        if end >= n:
            break
        nxt = max(end - settings.overlap_tokens, start + 1)
        start = _word_boundary_after(offsets, nxt, end)
    return None if last else wend


def _word_boundary_before(offsets: list[tuple[int, int]], start: int, end: int, slack: int) -> int:
    """Move ``end`` back (by at most ``slack``) so the window does not split a word."""
    for e in range(end, max(start + 1, end - slack) - 1, -1):
        if e >= len(offsets) or offsets[e][0] > offsets[e - 1][1]:
            return e
    return end


def _word_boundary_after(offsets: list[tuple[int, int]], start: int, limit: int) -> int:
    """Move ``start`` forward (not past ``limit``) to the first token that begins a word."""
    for s in range(start, limit):
        if s == 0 or offsets[s][0] > offsets[s - 1][1]:
            return s
    return start
