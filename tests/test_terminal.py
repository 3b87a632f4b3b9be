"""Issue 22, finding 5: no escape sequence or bidi override in user data reaches the terminal.

A file name, a document's text, a question id and a question carry a screen clear, a window title, an OSC 8
hyperlink, a colour and U+202E; `search`, `show`, `show ID` and the `answer` table must print each visibly and
never raw (real store, real flows, the real CLI).
"""

from __future__ import annotations

import json

import pytest

from conftest import SMALLEST_GENERATOR, write_corpus
from helpers import invoke
from storage.reports.escape import terminal_text

CLEAR, TITLE, LINK, RED, RLO = "\x1b[2J", "\x1b]0;pwned\x07", "\x1b]8;;http://x.invalid\x1b\\", "\x1b[31m", "\u202e"
HOSTILE = f"{CLEAR}{TITLE}{LINK}{RED}{RLO}"


def _assert_inert(out: str, whole: bool = True) -> None:
    """No raw control reaches ``out``; they show as ``\\x1b…`` (and, where the text is printed whole, U+202E)."""
    for raw in ("\x1b", "\x07", "\x9b", RLO):
        assert raw not in out, (raw, out[:2000])
    assert "\\x1b" in out and (not whole or ("\\x1b[2J" in out and "<U+202E>" in out)), out[:2000]


def test_terminal_text_shows_controls_and_keeps_text():
    assert terminal_text("a\tb\nc") == "a\tb\nc"
    assert terminal_text(f"x{CLEAR}y\r{RLO}z\x7f\x9b") == "x\\x1b[2Jy\\x0d<U+202E>z\\x7f\\x9b"
    assert terminal_text("Ünïcode 15 trillion ✓") == "Ünïcode 15 trillion ✓"


@pytest.fixture(scope="module")
def hostile_run(prefect_harness, tmp_path_factory):
    from flows.answer import run_answer
    from flows.index import run_index

    root = tmp_path_factory.mktemp("terminal")
    docs = write_corpus(root / "docs", {f"evil{RLO}txt.exe{CLEAR}.md": f"The Seine flows through Paris. {HOSTILE}"})
    store = root / "store"
    run_index(docs, store)
    questions = root / "q.jsonl"
    questions.write_text(json.dumps({"id": f"q{TITLE}1", "question": f"Which river flows through Paris? {HOSTILE}"})
                         + "\n")
    report = run_answer(questions, store, root / "out.parquet", k=1, generator=SMALLEST_GENERATOR, max_new_tokens=4)
    return store, root / "out.parquet", report


def test_search_show_and_the_answer_table_print_controls_visibly(hostile_run, capsys):
    from ragbatch.cli import console
    from ragbatch.show import print_answers

    store, results, report = hostile_run
    _assert_inert(invoke("search", "river Paris", "--store", str(store), "-k", "1", "--retriever", "bm25").output)
    _assert_inert(invoke("show", str(results)).output, whole=False)  # one clipped line per question
    _assert_inert(invoke("show", str(results), report.rows[0].question_id).output)
    print_answers(console, report.rows)
    _assert_inert(capsys.readouterr().out, whole=False)  # table cells wrap and clip
