"""Question files as users write them: JSONL, CSV and Parquet, with the mistakes they make."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.demo.corpus import DEMO_QUESTIONS
from tasks.ingest.questions import Question, QuestionFileError, load_questions


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_ids_answers_and_blank_lines(tmp_path: Path) -> None:
    f = _write(
        tmp_path / "qs.jsonl",
        '{"id": "a", "question": "  How many tokens?  ", "answers": ["15 trillion", " 15T ", ""]}\n'
        "\n"
        '{"question": "Who made it?", "answers": "Meta"}\n'
        '{"id": 7, "question": "When?", "extra": {"ignored": true}}\n'
        "   \n",
    )
    load = load_questions(f)
    src = str(f)
    assert load.errors == []
    assert load.questions == [
        Question("a", "How many tokens?", ("15 trillion", "15T"), src),
        Question("qs:3", "Who made it?", ("Meta",), src),
        Question("7", "When?", (), src),
    ]


def test_csv_json_and_pipe_answers_with_line_numbers(tmp_path: Path) -> None:
    f = _write(
        tmp_path / "qs.csv",
        "id,question,answers,notes\n"
        'c1,How many tokens?,"[""15 trillion"", ""15T""]",x\n'
        ",Who made it?,Meta | Meta AI,\n"
        "\n"
        'c3,"A question\nover two lines",,\n'
        "c4,,nothing,\n"
        'c5,Bad answers,"[not json]",\n'
        "c6,Too many cells,a,b,c\n"
        "c7,Short row\n",
    )
    load = load_questions([f])
    src = str(f)
    assert load.questions == [
        Question("c1", "How many tokens?", ("15 trillion", "15T"), src),
        Question("qs:3", "Who made it?", ("Meta", "Meta AI"), src),
        Question("c3", "A question\nover two lines", (), src),
        Question("c7", "Short row", (), src),
    ]
    assert load.errors == [
        f"{src}:7: missing 'question'",
        f"{src}:8: 'answers' looks like a JSON list but is not valid JSON (Expecting value)",
        f"{src}:9: 5 cells but the header has 4",
    ]


def test_csv_with_bom_and_padded_header(tmp_path: Path) -> None:
    f = tmp_path / "excel.csv"
    f.write_bytes("\ufeffquestion , answers\r\nWhat is RAG?,retrieval\r\n".encode())
    assert load_questions(f).questions == [Question("excel:2", "What is RAG?", ("retrieval",), str(f))]


def test_parquet_list_answers_int_ids_and_bad_rows(tmp_path: Path) -> None:
    f = tmp_path / "qs.parquet"
    table = pa.table(
        {
            "id": pa.array([1, 2, None, 4], pa.int64()),
            "question": ["How many tokens?", None, "Who made it?", "   "],
            "answers": pa.array([["15 trillion", "15T"], ["x"], None, []], pa.list_(pa.string())),
            "other": [0.5, 1.5, 2.5, 3.5],
        }
    )
    pq.write_table(table, f)
    load = load_questions(f)
    src = str(f)
    assert load.questions == [
        Question("1", "How many tokens?", ("15 trillion", "15T"), src),
        Question("qs:3", "Who made it?", (), src),
    ]
    assert load.errors == [f"{src}, row 2: missing 'question'", f"{src}, row 4: 'question' is empty"]


def test_parquet_string_answers(tmp_path: Path) -> None:
    f = tmp_path / "s.parquet"
    pq.write_table(pa.table({"question": ["Q1?", "Q2?"], "answers": ['["a", "b"]', "c|d"]}), f)
    assert [q.answers for q in load_questions(f).questions] == [("a", "b"), ("c", "d")]


def test_malformed_jsonl_rows_are_reported_and_the_rest_load(tmp_path: Path) -> None:
    f = _write(
        tmp_path / "bad.jsonl",
        '{"id": "ok1", "question": "Fine?"}\n'
        '{"id": "broken", "question": "no closing brace"\n'
        '{"id": "noq", "answers": ["x"]}\n'
        '["a", "list"]\n'
        '{"question": ["not", "a", "string"]}\n'
        '{"question": "   "}\n'
        '{"question": "Numbers?", "answers": 42}\n'
        '{"question": "Mixed?", "answers": ["ok", 3]}\n'
        '{"question": "Object id?", "id": {"a": 1}}\n'
        '{"id": "ok2", "question": "Also fine?", "answers": null}\n',
    )
    load = load_questions(f)
    src = str(f)
    assert [q.id for q in load.questions] == ["ok1", "ok2"]
    assert load.errors == [
        f"{src}:2: invalid JSON (Expecting ',' delimiter at column 48)",
        f"{src}:3: missing 'question'",
        f"{src}:4: expected a JSON object, got a list",
        f"{src}:5: 'question' must be a string, got a list",
        f"{src}:6: 'question' is empty",
        f"{src}:7: 'answers' must be a string or a list of strings, got int",
        f"{src}:8: 'answers' must be a string or a list of strings, got a list holding int",
        f"{src}:9: 'id' must be a string or an integer, got an object",
    ]


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("latin1.jsonl", '{"question": "caf\xe9?"}\n'.encode("latin-1"), ":1: not UTF-8 text (byte 0xe9"),
        ("late.jsonl", b'{"question": "ok"}\n{"question": "\xff"}\n', ":2: not UTF-8 text (byte 0xff"),
        ("empty.jsonl", b"", ": empty file"),
        ("blank.csv", b"\n  \n", ": empty file"),
        ("binary.jsonl", bytes(range(256)), ": binary file (contains NUL bytes)"),
        ("questions.json", b'[{"question": "x"}]', ": unknown extension '.json'"),
        ("noext", b'{"question": "x"}\n', ": unknown extension '(none)'"),
        ("fake.parquet", b"PAR1 this is not parquet", ": not a readable Parquet file"),
        ("nocol.csv", b"id,query\n1,what?\n", ":1: no 'question' column (header: id, query)"),
        ("nul.csv", b"question\nfine\n\x00\n", ": binary file (contains NUL bytes)"),
        ("allbad.jsonl", b'{"q": 1}\n', ": no valid questions (1 rows rejected)"),
    ],
)
def test_unusable_single_file_raises_naming_it(
    tmp_path: Path, name: str, content: bytes, problem: str
) -> None:
    f = tmp_path / name
    f.write_bytes(content)
    with pytest.raises(QuestionFileError) as info:
        load_questions(f)
    assert str(info.value).startswith(str(f) + problem), str(info.value)


def test_missing_file_and_parquet_without_question_column(tmp_path: Path) -> None:
    with pytest.raises(QuestionFileError, match="nope.jsonl: no such file"):
        load_questions(tmp_path / "nope.jsonl")
    f = tmp_path / "cols.parquet"
    pq.write_table(pa.table({"query": ["x"]}), f)
    with pytest.raises(QuestionFileError, match=r"cols\.parquet: no 'question' column \(columns: query\)"):
        load_questions(f)


def test_zero_valid_rows_lists_every_rejected_row(tmp_path: Path) -> None:
    f = _write(tmp_path / "none.jsonl", '{"id": 1}\nnot json\n')
    with pytest.raises(QuestionFileError) as info:
        load_questions(f)
    assert str(info.value).splitlines() == [
        f"{f}: no valid questions (2 rows rejected)",
        f"{f}:1: missing 'question'",
        f"{f}:2: invalid JSON (Expecting value at column 1)",
    ]


def test_folder_loads_sorted_supported_files_and_records_bad_ones(tmp_path: Path) -> None:
    d = tmp_path / "questions"
    d.mkdir()
    _write(d / "b.jsonl", '{"id": "b1", "question": "B?"}\n')
    _write(d / "a.csv", "question\nA?\n")
    pq.write_table(pa.table({"id": ["c1"], "question": ["C?"]}), d / "c.parquet")
    (d / "d.jsonl").write_bytes(b"\xff\xfe{}")
    _write(d / "README.md", "not a question file")
    (d / "sub").mkdir()
    _write(d / "sub" / "z.jsonl", '{"question": "nested, not read"}\n')
    load = load_questions(d)
    assert [(q.id, Path(q.source).name) for q in load.questions] == [
        ("a:2", "a.csv"),
        ("b1", "b.jsonl"),
        ("c1", "c.parquet"),
    ]
    assert load.errors == [f"{d / 'd.jsonl'}:1: not UTF-8 text (byte 0xff at offset 0)"]


def test_duplicate_ids_across_files_keep_the_first(tmp_path: Path) -> None:
    one = _write(
        tmp_path / "one.jsonl", '{"id": "q1", "question": "First?"}\n{"id": "q2", "question": "2?"}\n'
    )
    two = _write(tmp_path / "two.csv", "id,question\nq3,Three?\nq1,First again?\n")
    load = load_questions([one, str(two)])
    assert [q.id for q in load.questions] == ["q1", "q2", "q3"]
    assert load.questions[0].question == "First?"
    assert load.errors == [f"{two}:3: duplicate id 'q1' (first at {one}:1)"]


def test_several_inputs_one_unusable_and_all_unusable(tmp_path: Path) -> None:
    good = _write(tmp_path / "good.jsonl", '{"question": "Fine?"}\n')
    empty = _write(tmp_path / "empty.csv", "")
    missing = tmp_path / "missing.parquet"
    load = load_questions([good, empty, missing])
    assert [q.id for q in load.questions] == ["good:1"]
    assert load.errors == [f"{empty}: empty file", f"{missing}: no such file"]

    with pytest.raises(QuestionFileError) as info:
        load_questions([empty, missing])
    assert str(info.value).splitlines() == [
        "no questions loaded:",
        f"{empty}: empty file",
        f"{missing}: no such file",
    ]
    with pytest.raises(QuestionFileError, match="no question files given"):
        load_questions([])
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(QuestionFileError, match="emptydir: folder has no question files"):
        load_questions(tmp_path / "emptydir")


def test_demo_questions_file_loads_cleanly() -> None:
    load = load_questions(DEMO_QUESTIONS)
    assert load.errors == []
    assert 10 <= len(load.questions) <= 12
    first = load.questions[0]
    assert (first.id, first.question) == ("q01", "How many tokens was Llama 3 trained on?")
    assert "15 trillion" in first.answers
    assert all(q.answers for q in load.questions)
    rows = [json.loads(line) for line in DEMO_QUESTIONS.read_text(encoding="utf-8").splitlines()]
    assert all(r["evidence_doc_ids"] for r in rows)


def test_a_100k_character_question_is_a_row_error(tmp_path: Path) -> None:
    """Issue 22, finding 7: it was answered as normal, after 4 min and 4.3 GB, past the generator's context."""
    from tasks.ingest.questions import MAX_QUESTION_CHARS

    f = tmp_path / "q.jsonl"
    f.write_text(json.dumps({"id": "huge", "question": "why " * 25_000}) + "\n"
                 + json.dumps({"id": "ok", "question": "Why is the sky blue?"}) + "\n")
    load = load_questions(f)
    assert [q.id for q in load.questions] == ["ok"]
    assert load.errors == [f"{f}:1: 'question' is 99999 characters, more than {MAX_QUESTION_CHARS}: a question, "
                           "not a document (put long texts in the indexed folder)"]


def test_a_large_question_file_is_streamed_in_bounded_memory(tmp_path: Path) -> None:
    """A 100 MB JSONL file (25,600 questions of ~4 KB) is read batch by batch: the reader's peak memory grows by
    less than 40 MB over its imports (7 MB measured; loading it whole grew it by 305 MB); a runaway 3 MB line is
    a row error, not a 3 MB string."""
    import subprocess
    import sys

    f = tmp_path / "big.jsonl"
    filler = "word " * 780
    with f.open("w", encoding="utf-8") as out:
        for i in range(25_600):
            out.write(json.dumps({"id": f"q{i}", "question": f"{filler} number {i}?"}) + "\n")
        out.write(json.dumps({"question": "x" * 3_000_000}) + "\n")
    assert f.stat().st_size > 100e6
    script = (
        "import resource, sys; from tasks.ingest.questions import QuestionStream\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "s = QuestionStream(sys.argv[1]); n = sum(len(b) for b in s.batches(64))\n"
        "print(n, len(s.errors), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
        "print(s.errors[0])\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(f)], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, error = proc.stdout.splitlines()
    n, errors, grown_kb = map(int, first.split())
    assert (n, errors) == (25_600, 1)
    assert error == f"{f}:25601: line longer than 1048576 bytes"
    assert grown_kb < 40_000, f"peak memory grew {grown_kb / 1024:.0f} MB reading a 100 MB question file"
