"""Loaders for the documents people have (issue 12): real PDF, HTML, DOCX and CSV files written here, loaded,
indexed with the real embedder through the real index flow, and searched."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from conftest import write_corpus
from storage.store import open_store
from tasks.demo.docs import csv_text, docx_bytes, html_page, pdf_bytes
from tasks.ingest.load import load_documents


def _page(topic: str, n: int, fact: str = "") -> str:
    """A page longer than a chunk (~300 tokens), its one fact at the end, so the chunk holding it starts there."""
    filler = " ".join(f"The committee discussed {topic} item {n}.{i} at length and agreed to revisit it." for i in
                      range(22))
    return f"{topic.capitalize()}. {filler} {fact}".strip()


PAGES = [
    _page("introduction", 1),
    _page("budget overview", 2),
    _page("water supply", 3, "The Ostervik reservoir holds 38 million cubic metres of drinking water."),
    _page("summary", 4),
]


def _mixed(root):
    return write_corpus(root, {
        "report.pdf": pdf_bytes(PAGES, title="Council report"),
        "page.html": html_page("Lighthouse news", ["The Skarv lighthouse was built in 1889 on the outer skerry.",
                                                   "Its lamp was electrified in 1921."]),
        "handbook.docx": docx_bytes("Ferry handbook", ["The crossing to Varnes takes 40 minutes."],
                                    [["Route", "Departures"], ["Varnes", "14"]]),
        "sensors.csv": csv_text(["id", "name", "location"], [["s1", "Tern-7", "Pier 3"], ["s2", "Gull-2", "Mole"]]),
        "plain.tsv": csv_text(["city", "population"], [["Varnes", "5100"], ["Holm", "800"]], delimiter="\t"),
        "notes.md": "# Notes\n\nThe cafe opens at seven.\n",
    })


def test_every_format_keeps_path_format_location_and_title(tmp_path):
    res = load_documents(_mixed(tmp_path / "docs"))
    assert res.errors == []
    by = {d.doc_id: d for d in res.documents}
    assert sorted(by) == ["handbook.docx", "notes.md", "page.html", "plain.tsv#row-1", "plain.tsv#row-2",
                          "report.pdf", "sensors.csv#s1", "sensors.csv#s2"]
    pdf = by["report.pdf"]
    assert (pdf.format, pdf.title, len(pdf.page_offsets)) == ("pdf", "Council report", 4)
    third = pdf.text.index("Ostervik")
    assert pdf.page_at(third) == 3 and pdf.page_at(0) == 1 and pdf.page_at(len(pdf.text) - 1) == 4
    html = by["page.html"]
    assert html.title == "Lighthouse news" and "built in 1889" in html.text
    assert not any(junk in html.text for junk in ("track(", "Home", "Copyright", "margin"))  # scripts, nav, footer
    assert "Route | Departures" in by["handbook.docx"].text and "Varnes | 14" in by["handbook.docx"].text
    assert by["handbook.docx"].title == "Ferry handbook"
    row = by["sensors.csv#s2"]
    assert (row.text, row.row, row.format) == ("id: s2; name: Gull-2; location: Mole", 2, "csv")
    assert by["plain.tsv#row-2"].text == "city: Holm; population: 800"


def test_bad_inputs_are_named_and_skipped_and_the_rest_loads(tmp_path):
    good = pdf_bytes(PAGES)
    root = write_corpus(tmp_path / "docs", {
        "ok.txt": "Fine document.",
        "locked.pdf": pdf_bytes(PAGES, encrypt_password="secret"),
        "scan.pdf": pdf_bytes(["", ""], text=False),
        "truncated.pdf": good[: len(good) // 2],
        "corrupt.pdf": good[:200] + b"\x00garbage" * 50 + good[-30:],
        "menu.html": "<html><head><title>Menu</title><script>x()</script></head><body><nav><a href='/'>Home</a>"
                     "</nav><footer>Copyright</footer></body></html>",
        "old.docx": b"\xd0\xcf\x11\xe0 an old binary Word file",
        "ragged.csv": "name,city\nAda,London\nBob\nCy,Paris,extra\nDee,Rome\n",
        "noheader.csv": "1,Ada,London\n2,Bob,Paris\n",
    })
    res = load_documents(root)
    assert [d.doc_id for d in res.documents] == ["ok.txt", "ragged.csv#row-1", "ragged.csv#row-4"]
    msgs = "\n".join(res.errors)
    assert "locked.pdf: encrypted PDF (it needs a password)" in msgs
    assert "scan.pdf: no text layer — OCR is not supported" in msgs
    assert "truncated.pdf: truncated PDF" in msgs
    assert "corrupt.pdf: corrupt PDF" in msgs
    assert "menu.html: no main text in the HTML page" in msgs
    assert "old.docx: not a DOCX file (not a zip archive" in msgs
    assert "ragged.csv: line 3: 1 fields, the header has 2 (ragged row skipped)" in msgs
    assert "ragged.csv: line 4: 3 fields, the header has 2 (ragged row skipped)" in msgs
    assert "noheader.csv: no header row" in msgs
    assert res.failed_paths == {"locked.pdf", "scan.pdf", "truncated.pdf", "corrupt.pdf", "menu.html", "old.docx",
                                "noheader.csv"}


def test_a_pdf_with_an_empty_user_password_is_read(tmp_path):
    """"Protected" PDFs that open without a password (permissions only) are common and readable."""
    root = write_corpus(tmp_path / "docs", {"perm.pdf": pdf_bytes(PAGES, encrypt_password="")})
    res = load_documents(root)
    assert res.errors == [] and "Ostervik" in res.documents[0].text


def test_index_and_search_every_format_with_pages(prefect_harness, tmp_path):
    from flows.index import run_index
    from tasks.retrieval.search import search

    docs, store = _mixed(tmp_path / "docs"), tmp_path / "store"
    rep = run_index(docs, store)
    assert rep.added == 8 and rep.skipped_files == []
    assert open_store(store).verify().problems == []
    queries = {"How much drinking water does the Ostervik reservoir hold?": "report.pdf",
               "When was the Skarv lighthouse built?": "page.html",
               "How long is the crossing to Varnes?": "handbook.docx",
               "Where is the Gull-2 sensor?": "sensors.csv#s2",
               "What is the population of Holm?": "plain.tsv#row-2"}
    for retriever in ("dense", "bm25", "hybrid"):
        hits, _ = search(str(store), list(queries), k=3, retriever=retriever)
        for (q, want), h in zip(queries.items(), hits, strict=True):
            assert h.doc_ids[0] == want, (retriever, q, h.doc_ids)
        assert hits[0].pages[0][0] == 3  # the fact is only on page 3
        assert hits[1].pages[0] == (None, None)
    chunks = pq.read_table(next((store / "shards").glob("*.chunks.parquet"))).to_pylist()
    rows = {c["doc_id"]: c["row"] for c in chunks if c["doc_id"].startswith("sensors")}
    assert rows == {"sensors.csv#s1": 1, "sensors.csv#s2": 2}
    pdf = [c for c in chunks if c["doc_id"] == "report.pdf"]
    assert all(1 <= c["page_start"] <= c["page_end"] <= 4 for c in pdf) and pdf[-1]["page_end"] == 4


def test_incremental_csv_row_edit_reembeds_one_row_and_pdf_change_the_whole_document(prefect_harness, tmp_path):
    from flows.index import run_index

    rows = [[f"r{i}", f"Station {i}", f"{i * 10} metres"] for i in range(1, 7)]
    docs = write_corpus(tmp_path / "docs", {"st.csv": csv_text(["id", "name", "depth"], rows),
                                            "report.pdf": pdf_bytes(PAGES)})
    store = tmp_path / "store"
    run_index(docs, store)
    rows[3][2] = "999 metres"
    (docs / "st.csv").write_text(csv_text(["id", "name", "depth"], rows))
    (docs / "report.pdf").write_bytes(pdf_bytes(PAGES[:2] + [_page("water", 3, "It was drained.")] + PAGES[3:]))
    rep = run_index(docs, store)
    assert sorted(rep.embedded_doc_ids) == ["report.pdf", "st.csv#r4"]
    assert (rep.changed, rep.unchanged) == (2, 5)
    pdf_chunks = [r for r in open_store(store).manifest().to_pylist() if r["doc_id"] == "report.pdf"]
    assert rep.chunks_embedded == pdf_chunks[0]["n_chunks"] + 1  # the whole PDF, one row
    # A PDF that cannot be read now keeps its indexed version (a truncated re-export, a file mid-copy).
    good = (docs / "report.pdf").read_bytes()
    (docs / "report.pdf").write_bytes(good[: len(good) // 2])
    rep = run_index(docs, store)
    assert any(s.startswith("report.pdf: truncated PDF") for s in rep.skipped_files)
    assert "report.pdf" in {r["doc_id"] for r in open_store(store).manifest().to_pylist()} and rep.removed == 0


def test_a_store_written_before_the_location_columns_loads_and_verifies(prefect_harness, tmp_path):
    """Chunk tables without page_start/page_end/row (older stores) read them as nulls; search and verify work."""
    import hashlib

    import pyarrow as pa

    from flows.index import run_index
    from tasks.retrieval.search import search

    docs = write_corpus(tmp_path / "docs", {"a.txt": "The Ostervik reservoir holds drinking water.",
                                            "b.txt": "The ferry leaves from gate B."})
    store = tmp_path / "store"
    run_index(docs, store)
    index = json.loads((store / "index.json").read_text())
    for shard in index["shards"]:
        path = store / "shards" / f"{shard['name']}.chunks.parquet"
        old = pq.read_table(path).drop_columns(["page_start", "page_end", "row"])
        assert "row" not in old.column_names
        pq.write_table(old, path)
        shard["chunks_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (store / "index.json").write_text(json.dumps(index))
    assert open_store(store).verify().problems == []
    hits, _ = search(str(store), ["reservoir drinking water"], k=1)
    assert hits[0].doc_ids == ["a.txt"] and hits[0].pages == [(None, None)]
    assert pa.types.is_int32(open_store(store).read_chunks(index["shards"][0]["name"]).schema.field("page_start").type)
