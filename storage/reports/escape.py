"""Escaping user-controlled text (questions, answers, document text and ids) for Markdown outputs and terminals.

Markdown passes raw HTML through, so a question holding ``<script>`` or ``<img onerror=…>`` would run in
whatever renders ``summary.md`` or the Prefect ``answers`` artifact, a newline would end a table row, and
``![x](http://…)`` would make the viewer fetch a URL. Every such string goes through :func:`md_text` (or
:func:`md_code` for ids shown as code).

A terminal obeys control characters: ``ESC[2J`` in a document clears the screen, ``ESC]0;…`` retitles the window,
OSC 8 plants a hyperlink, and U+202E makes ``rtl\u202etxt.exe.md`` display as another name. Every string a
command prints goes through :func:`terminal_text`, which shows them (``\x1b``, ``<U+202E>``) instead.
"""

from __future__ import annotations

import html
import re

# C0 controls but tab and newline, DEL, C1 controls, and the bidi marks, embeddings, overrides and isolates.
_BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_TERMINAL_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f" + _BIDI + "]")


MAX_MESSAGE_CHARS = 500


def clip_message(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """A message that quotes user content, cut to ``limit`` characters (a CSV header of 100k columns was printed
    whole, twice: 1 MB of terminal)."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def terminal_text(value: object) -> str:
    """``value`` safe to print on a terminal: control characters and bidi controls made visible, never obeyed."""
    def visible(m: re.Match[str]) -> str:
        code = ord(m.group())
        return f"\\x{code:02x}" if code < 0x100 else f"<U+{code:04X}>"

    return _TERMINAL_UNSAFE.sub(visible, str(value))


# Markdown's inline syntax: emphasis, code, links/images, tables, strikethrough, and the escape character itself.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def md_text(value: object, limit: int | None = None) -> str:
    """``value`` as literal inline Markdown: one line, HTML escaped, inline syntax backslash-escaped.

    Whitespace runs (newlines included) collapse to one space; ``limit`` clips the text (before escaping,
    so an entity or escape is never cut in half) and marks the cut with "…".
    """
    text = " ".join(str(value).split())
    if limit is not None and len(text) > limit:
        text = text[:limit] + "…"
    return _MD_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))


def md_code(value: object, in_table: bool = False) -> str:
    """``value`` as one inline code span (shown verbatim: no HTML or Markdown inside code is interpreted).

    The fence is one backtick longer than the longest run in the text, as CommonMark prescribes; in a table
    cell a ``|`` (which splits cells even inside code) is escaped, as GFM prescribes.
    """
    text = " ".join(str(value).split())
    runs = [len(m) for m in re.findall(r"`+", text)]
    fence = "`" * (max(runs, default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    if in_table:
        text = text.replace("|", "\\|")
    return f"{fence}{pad}{text}{pad}{fence}"
