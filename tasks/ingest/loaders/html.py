"""HTML through trafilatura (Apache-2.0): the main text, without navigation, boilerplate or scripts.

Chosen over BeautifulSoup + markdownify for what it keeps, not for speed: it finds the main text (and drops
menus, footers and cookie banners whatever their tags) where bs4 needs a hand-written list of tags to drop.
bs4 + markdownify is ~3x faster (benchmarks/RESULTS.md, *Loading*), but both stay a few percent of index time
next to embedding. Layout elements are removed before extraction, since trafilatura falls back to them on a
page that has no main text (a navigation-only page would otherwise index its menu).
"""

from __future__ import annotations

import codecs
import re
from collections import Counter
from pathlib import PurePosixPath
from typing import Any

from tasks.ingest.loaders.base import Document, Loader, LoadError, clean_text, register

LAYOUT_TAGS = ("nav", "header", "footer", "aside", "script", "style", "noscript", "form", "template")
MIN_WORDS = 3  # fewer words than this is not a page's main text
# libxml2 stops building the tree 256 elements deep and drops everything below; such a page is refused, since
# what it would index is not what the page says.
MAX_DEPTH = 256
_BLOCKS = ("p", "li", "td", "th", "dd", "dt", "blockquote", "pre", "h1", "h2", "h3", "h4", "h5", "h6")
_CHARSET = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?\s*([-\w.:]+)|<\?xml[^>]*?encoding\s*=\s*["']([-\w.:]+)""",
                      re.IGNORECASE)


@register
class HtmlLoader(Loader):
    format = "html"
    suffixes = (".html", ".htm", ".xhtml")
    text_input = False  # trafilatura detects the page's encoding (a <meta charset> need not be UTF-8)

    def load(self, rel: str, raw: bytes, mtime: float) -> tuple[list[Document], list[str]]:
        text, title, warnings = extract_main_text(raw)
        title = title or PurePosixPath(rel).name
        if title and not text.startswith(title):
            text = f"{title}\n\n{text}"  # the title is searchable: it often names what the page is about
        return [self.document(rel, raw, mtime, text, title=title)], [f"{rel}: {w}" for w in warnings]


def extract_main_text(raw: bytes) -> tuple[str, str, list[str]]:
    """(main text, title, warnings) of an HTML page, or :class:`LoadError` when it has none.

    Warnings name what was read differently from the page: an unknown declared charset, repeated paragraphs kept
    once. Both were silent: a page of an unknown charset became mojibake, and a 20 MB page of one repeated
    paragraph became 553 characters.
    """
    import trafilatura
    from trafilatura.utils import load_html

    if not raw.strip():
        raise LoadError("empty file")
    page, warnings = decode_page(raw)
    tree = load_html(page)
    if tree is None:  # a fragment without <html>/<body>: wrap it
        tree = load_html(f"<html><body>{page}</body></html>" if isinstance(page, str)
                         else b"<html><body>" + page + b"</body></html>")
    if tree is None:
        raise LoadError("not parseable as HTML")
    if _depth(tree) >= MAX_DEPTH:
        raise LoadError(f"elements nested {MAX_DEPTH} or more levels deep: the HTML parser stops there and drops "
                        "the text below, so the page cannot be read whole")
    title = " ".join((tree.findtext(".//title") or "").split())
    for el in tree.xpath("|".join(f"//{t}" for t in LAYOUT_TAGS)):
        if el.getparent() is not None:
            el.drop_tree()
    repeated = _repeated_blocks(tree)
    doc = trafilatura.bare_extraction(tree, with_metadata=False, include_comments=False, include_tables=True)
    text = clean_text(doc.text or "").strip() if doc is not None else ""
    if len(text.split()) < MIN_WORDS:
        raise LoadError("no main text in the HTML page (only navigation, scripts or boilerplate)")
    kept = {t: text.count(t) for t in repeated}
    dropped = {t: n - kept[t] for t, n in repeated.items() if 0 < kept[t] < n}
    if dropped:
        warnings.append(f"{sum(dropped.values())} repeated copies of {len(dropped)} identical paragraphs were "
                        "dropped by the main-text extraction (each is indexed once)")
    return text, title, warnings


def decode_page(raw: bytes) -> tuple[str | bytes, list[str]]:
    """The page as trafilatura should read it, and a warning when its declared charset is unknown.

    A charset Python knows (or none) is left to trafilatura, which reads ``<meta charset>`` and detects the
    rest. An unknown one is read as UTF-8 when the bytes are valid UTF-8, else as windows-1252 (what browsers
    fall back to) with a warning: a guess that may garble non-ASCII characters must not be silent.
    """
    m = _CHARSET.search(raw[:4096])
    if m is None:
        return raw, []
    name = (m.group(1) or m.group(2)).decode("ascii", "replace")
    try:
        codecs.lookup(name)
        return raw, []
    except LookupError:
        pass
    try:
        return raw.decode("utf-8"), []
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace"), [
            f"unknown charset {name[:40]!r} declared and the page is not UTF-8: read as windows-1252, so "
            "non-ASCII characters may be wrong"]


def _depth(tree: Any) -> int:
    from lxml import etree

    depth = deepest = 0
    for event, _ in etree.iterwalk(tree, events=("start", "end")):
        depth += 1 if event == "start" else -1
        deepest = max(deepest, depth)
    return deepest


def _repeated_blocks(tree: Any, most: int = 50) -> dict[str, int]:
    """The (at most ``most``) paragraph texts the page holds more than once, with their counts."""
    counts = Counter(" ".join(t.split()) for el in tree.iter(*_BLOCKS) if (t := el.text_content()).strip())
    return {t: n for t, n in counts.most_common(most) if n > 1 and len(t.split()) >= MIN_WORDS}
