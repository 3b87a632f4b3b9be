"""Citations (issue 12): passage numbers the model writes, inferred ones where it writes none, resolved to
chunk, document and page; and a real answer run on the documents demo whose citations resolve."""

from __future__ import annotations

import pyarrow.parquet as pq

from conftest import SMALLEST_GENERATOR
from storage.reports.markdown import cited_where, where
from storage.store import open_store
from tasks.config import GenerationConfig
from tasks.generation.cite import citations, cite_columns, split_citations
from tasks.retrieval.search import SearchResult


def test_marks_are_read_and_removed_and_out_of_range_numbers_are_not_citations():
    assert split_citations("Levi's Stadium [2]", 5) == ("Levi's Stadium", [2])
    assert split_citations("1901 [1, 3].", 5) == ("1901", [1, 3])
    assert split_citations("[3] Denver Broncos", 5) == ("Denver Broncos", [3])
    assert split_citations("the answer (passage [2])", 5) == ("the answer", [2])
    assert split_citations("Santa Clara [7]", 5) == ("Santa Clara", [])
    assert split_citations("x [1][2] [1]", 5) == ("x", [1, 2])
    assert split_citations("15 trillion.", 5) == ("15 trillion.", [])


def _hit() -> SearchResult:
    return SearchResult("q", ["r.pdf#0", "r.pdf#3", "n.md#0"], ["r.pdf", "r.pdf", "n.md"],
                        ["The dam is 40 m high.", "The reservoir holds 38 million cubic metres of water.",
                         "The cafe opens at seven."], [0.9, 0.8, 0.1], pages=[(1, 1), (3, 4), (None, None)])


def test_written_citations_resolve_to_chunk_document_and_pages():
    cols = cite_columns("38 million cubic metres [2]", "38 million cubic metres", _hit())
    assert cols["page_starts"] == [1, 3, None] and cols["page_ends"] == [1, 4, None]
    assert cols["citations"] == [{"passage": 2, "chunk_id": "r.pdf#3", "doc_id": "r.pdf", "page_start": 3,
                                  "page_end": 4, "inferred": False, "supported": True}]
    assert cited_where(cols["citations"]) == "[2] r.pdf pp. 3–4"  # no page breaks recorded: the chunk's range
    # A mark on a passage that does not hold the answer is kept, and flagged.
    wrong = cite_columns("38 million cubic metres [1]", "38 million cubic metres", _hit())["citations"]
    assert [(c["passage"], c["supported"]) for c in wrong] == [(1, False)]
    assert cited_where(wrong) == "[1] r.pdf p. 1 (unsupported)"


def test_without_marks_the_supporting_passages_are_cited_as_inferred():
    h = _hit()
    cols = cite_columns("38 million cubic metres", "38 million cubic metres", h)
    assert [(c["passage"], c["inferred"]) for c in cols["citations"]] == [(2, True)]
    assert cited_where(cols["citations"]) == "~[2] r.pdf pp. 3–4"
    # Nothing supports an invented answer, and an empty answer cites nothing.
    assert citations("Paris", [], h.chunk_ids, h.doc_ids, h.texts, [1, 3, None], [1, 4, None]) == []
    assert citations(" ", [], h.chunk_ids, h.doc_ids, h.texts, [1, 3, None], [1, 4, None]) == []
    assert where("report.pdf", 4, 4) == "report.pdf p. 4" and where("s.csv#row-2", None, None) == "s.csv#row-2"


def test_answers_on_the_documents_demo_cite_existing_chunks_with_pages(prefect_harness, tmp_path):
    from flows.answer import run_answer
    from flows.index import run_index
    from tasks.demo.docs import build_docs_demo

    docs, questions = build_docs_demo(tmp_path)
    store, out = tmp_path / "store", tmp_path / "res.parquet"
    run_index(docs, store)
    gs = GenerationConfig(generator=SMALLEST_GENERATOR, prompt="extract-cite", max_new_tokens=12)
    rep = run_answer(questions, store, out, k=3, generation=gs)
    st = open_store(store)
    live = {c for s in st.meta().shards for c in st.read_chunks(s.name)["chunk_id"].to_pylist()}
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == rep.questions == 6
    for r in rows:
        assert len(r["page_starts"]) == len(r["page_ends"]) == len(r["chunk_ids"])
        for c in r["citations"]:
            assert c["chunk_id"] in live and c["chunk_id"] == r["chunk_ids"][c["passage"] - 1]
            assert c["doc_id"] == r["doc_ids"][c["passage"] - 1]
            # The cited span's pages lie in the chunk's range (tests/test_citations.py: the page itself).
            lo, hi = r["page_starts"][c["passage"] - 1], r["page_ends"][c["passage"] - 1]
            if lo is None:
                assert c["page_start"] is None
            else:
                assert lo <= c["page_start"] <= c["page_end"] <= hi
    dredging = next(r for r in rows if r["question_id"] == "dredging")
    assert dredging["doc_ids"][0] == "annual-report.pdf" and dredging["page_starts"][0] == 3
