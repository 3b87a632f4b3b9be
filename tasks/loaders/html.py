"""HTML through trafilatura (Apache-2.0): the main text, without navigation, boilerplate or scripts.

Chosen over BeautifulSoup + markdownify for what it keeps, not for speed: it finds the main text (and drops
menus, footers and cookie banners whatever their tags) where bs4 needs a hand-written list of tags to drop.
bs4 + markdownify is ~3x faster (benchmarks/RESULTS.md, *Loading*), but both stay a few percent of index time
next to embedding. Layout elements are removed before extraction, since trafilatura falls back to them on a
page that has no main text (a navigation-only page would otherwise index its menu).
"""

from __future__ import annotations

from pathlib import PurePosixPath

from tasks.loaders.base import Document, Loader, LoadError, clean_text, register

LAYOUT_TAGS = ("nav", "header", "footer", "aside", "script", "style", "noscript", "form", "template")
MIN_WORDS = 3  # fewer words than this is not a page's main text


@register
class HtmlLoader(Loader):
    format = "html"
    suffixes = (".html", ".htm", ".xhtml")
    text_input = False  # trafilatura detects the page's encoding (a <meta charset> need not be UTF-8)

    def load(self, rel: str, raw: bytes, mtime: float) -> tuple[list[Document], list[str]]:
        text, title = extract_main_text(raw)
        title = title or PurePosixPath(rel).name
        if title and not text.startswith(title):
            text = f"{title}\n\n{text}"  # the title is searchable: it often names what the page is about
        return [self.document(rel, raw, mtime, text, title=title)], []


def extract_main_text(raw: bytes) -> tuple[str, str]:
    """(main text, title) of an HTML page, or :class:`LoadError` when it has none."""
    import trafilatura
    from trafilatura.utils import load_html

    if not raw.strip():
        raise LoadError("empty file")
    tree = load_html(raw)
    if tree is None:  # a fragment without <html>/<body>: wrap it
        tree = load_html(b"<html><body>" + raw + b"</body></html>")
    if tree is None:
        raise LoadError("not parseable as HTML")
    title = " ".join((tree.findtext(".//title") or "").split())
    for el in tree.xpath("|".join(f"//{t}" for t in LAYOUT_TAGS)):
        if el.getparent() is not None:
            el.drop_tree()
    doc = trafilatura.bare_extraction(tree, with_metadata=False, include_comments=False, include_tables=True)
    text = clean_text(doc.text or "").strip() if doc is not None else ""
    if len(text.split()) < MIN_WORDS:
        raise LoadError("no main text in the HTML page (only navigation, scripts or boilerplate)")
    return text, title
