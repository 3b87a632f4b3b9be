"""Document loading: ids, hashes, and a clear message for every file that cannot be used."""

from __future__ import annotations

import hashlib
import json

from conftest import write_corpus
from tasks.ingest.load import load_documents


def test_loads_text_markdown_jsonl_tree_with_stable_ids(tmp_path):
    root = write_corpus(tmp_path / "docs", {
        "a.txt": "Alpha text.",
        "sub/b.md": "# Beta\nBeta text.",
        "c.jsonl": '{"id": "x1", "text": "First record", "lang": "en"}\n\n{"text": "Second record"}\n',
    })
    res = load_documents(root)
    assert res.errors == []
    ids = [d.doc_id for d in res.documents]
    assert ids == ["a.txt", "c.jsonl#line-3", "c.jsonl#x1", "sub/b.md"]
    a = res.documents[0]
    assert a.sha256 == hashlib.sha256(b"Alpha text.").hexdigest() and a.size == 11
    x1 = next(d for d in res.documents if d.doc_id == "c.jsonl#x1")
    assert x1.text == "First record" and x1.metadata["lang"] == "en" and x1.path == "c.jsonl"
    assert [d.doc_id for d in load_documents(root).documents] == ids  # stable across runs


def test_bad_files_are_named_and_skipped_rest_loads(tmp_path):
    root = write_corpus(tmp_path / "docs", {
        "good.txt": "Fine document.",
        "empty.txt": "",
        "blank.md": "  \n\n",
        "binary.txt": b"\x89PNG\x00\x00\x01\x02",
        "latin1.txt": "caf\xe9".encode("latin-1"),
        "image.png": b"\x89PNG",
        "bad.jsonl": '{"id": 1, "text": "ok line"}\n{not json\n{"id": 2}\n',
    })
    res = load_documents(root)
    assert [d.doc_id for d in res.documents] == ["bad.jsonl#1", "good.txt"]
    msgs = "\n".join(res.errors)
    assert "empty.txt: empty file" in msgs and "blank.md: empty file" in msgs
    assert "binary.txt: binary file" in msgs
    assert "latin1.txt: not UTF-8 text (byte 0xe9 at offset 3)" in msgs
    assert "image.png: unsupported file type .png" in msgs
    assert "bad.jsonl: line 2: invalid JSON (" in msgs
    assert "bad.jsonl: line 3: needs a non-empty string field 'text'" in msgs
    # Whole-file failures are remembered so that their previously indexed versions are kept.
    assert res.failed_paths == {"empty.txt", "blank.md", "binary.txt", "latin1.txt"}


def test_nul_bytes_anywhere_are_rejected(tmp_path):
    """Issue 10, finding 5: a NUL past the first 8 KB, or a JSON-escaped one, never reaches chunk text."""
    late = b"plain text " * 2000 + b"\x00 and more"
    root = write_corpus(tmp_path / "docs", {
        "late.txt": late,
        "ok.txt": "Fine.",
        "esc.jsonl": '{"id": "a", "text": "nul \\u0000 inside"}\n{"id": "b", "text": "fine"}\n',
    })
    res = load_documents(root)
    assert [d.doc_id for d in res.documents] == ["esc.jsonl#b", "ok.txt"]
    msgs = "\n".join(res.errors)
    assert f"late.txt: binary file (a NUL byte at offset {late.index(0)})" in msgs
    assert "esc.jsonl: line 1: 'text' contains NUL characters" in msgs
    assert all("\x00" not in d.text for d in res.documents)


def test_jsonl_ids_follow_the_question_loader_rules(tmp_path):
    """Issue 10, finding 8: null or blank ids fall back to line-N; lists, objects, floats and booleans are refused."""
    lines = [{"id": None, "text": "one"}, {"id": "  ", "text": "two"}, {"id": 7, "text": "three"},
             {"id": ["x", "y"], "text": "four"}, {"id": {"k": 1}, "text": "five"}, {"id": True, "text": "six"},
             {"id": 1.5, "text": "seven"}, {"id": " padded ", "text": "eight"}]
    root = write_corpus(tmp_path / "docs", {"d.jsonl": "".join(json.dumps(o) + "\n" for o in lines)})
    res = load_documents(root)
    assert [d.doc_id for d in res.documents] == ["d.jsonl#7", "d.jsonl#line-1", "d.jsonl#line-2", "d.jsonl#padded"]
    for n, kind in ((4, "list"), (5, "dict"), (6, "bool"), (7, "float")):
        assert f"d.jsonl: line {n}: 'id' must be a string or an integer, got {kind}" in res.errors
