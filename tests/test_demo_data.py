"""The demo corpus built from the real crfm-helm wheel, and the demo questions checked against it."""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tasks.demo.corpus import (
    CORPUS_FILENAME,
    DEMO_QUESTIONS,
    HELM_METADATA_MEMBER,
    DemoDataError,
    build_demo_corpus,
    clean_description,
    fetch_helm_metadata,
    fetch_wheel,
    parameters_in_words,
)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = build_demo_corpus(tmp_path_factory.mktemp("demo") / "corpus")
    return folder / CORPUS_FILENAME


@pytest.fixture(scope="module")
def corpus(corpus_file: Path) -> dict[str, dict[str, Any]]:
    rows = [json.loads(line) for line in corpus_file.read_text(encoding="utf-8").splitlines()]
    return {r["id"]: r for r in rows}


def test_corpus_shape(corpus_file: Path, corpus: dict[str, dict[str, Any]]) -> None:
    lines = corpus_file.read_text(encoding="utf-8").splitlines()
    ids = [json.loads(line)["id"] for line in lines]
    assert len(lines) >= 600
    assert len(set(ids)) == len(ids) and ids == sorted(ids)
    for r in corpus.values():
        assert list(r) == ["id", "text", "title", "creator", "release_date", "num_parameters"]
        assert isinstance(r["text"], str) and r["text"].strip()
        assert r["release_date"] is None or re.fullmatch(r"\d{4}-\d{2}-\d{2}", r["release_date"])
        params = r["num_parameters"]
        assert params is None or (isinstance(params, int) and params > 0)
        assert "](" not in r["text"] and "http" not in r["text"] and "`" not in r["text"], r["id"]


def test_llama3_document(corpus: dict[str, dict[str, Any]]) -> None:
    doc = corpus["meta/llama-3-8b"]
    assert doc["title"] == "Llama 3 (8B)"
    facts = (doc["creator"], doc["release_date"], doc["num_parameters"])
    assert facts == ("Meta", "2024-04-18", 8_000_000_000)
    assert doc["text"].startswith(
        "Llama 3 (8B) was created by Meta and released on April 18, 2024. It has 8 billion parameters. "
        "Llama 3 is a family of language models that have been trained on more than 15 trillion tokens"
    )
    assert "15 trillion" in corpus["meta/llama-3-70b"]["text"]


def test_data_quirks_are_handled(corpus: dict[str, dict[str, Any]]) -> None:
    # "release:" instead of "release_date:", padded from "2024-6-18"; "2024-18-4" is not a date.
    assert corpus["ibm-granite/granite-3.0-2b-base"]["release_date"] == "2024-10-21"
    assert corpus["ibm/granite-3b-code-instruct"]["release_date"] == "2024-06-18"
    assert corpus["ibm/granite-20b-code-instruct-8k"]["release_date"] is None
    assert corpus["openai/dall-e-3"]["num_parameters"] is None  # HELM says 0
    assert corpus["arabicai/llm-x"]["text"] == "Arabic.AI LLM-X was created by Arabic.AI."
    assert "inceptionai/jais-family-6p7b-chat" in corpus  # listed twice in HELM, once here


def test_every_demo_question_is_answered_by_its_evidence(corpus: dict[str, dict[str, Any]]) -> None:
    rows = [json.loads(line) for line in DEMO_QUESTIONS.read_text(encoding="utf-8").splitlines()]
    assert rows[0]["question"] == "How many tokens was Llama 3 trained on?"
    assert [r["id"] for r in rows] == [f"q{i:02d}" for i in range(1, len(rows) + 1)]
    for r in rows:
        assert r["evidence_doc_ids"], r["id"]
        for doc_id in r["evidence_doc_ids"]:
            assert doc_id in corpus, (r["id"], doc_id)
            text = corpus[doc_id]["text"].lower()
            assert any(a.lower() in text for a in r["answers"]), (r["id"], doc_id)


def test_rebuild_is_idempotent_and_atomic(corpus_file: Path) -> None:
    before = (corpus_file.read_bytes(), corpus_file.stat().st_mtime_ns)
    assert build_demo_corpus(corpus_file.parent) == corpus_file.parent
    assert (corpus_file.read_bytes(), corpus_file.stat().st_mtime_ns) == before
    assert sorted(p.name for p in corpus_file.parent.iterdir()) == [CORPUS_FILENAME]


def test_fetch_helm_metadata_copies_the_yaml_out_of_the_wheel() -> None:
    path = fetch_helm_metadata()
    assert path.name == "helm_model_metadata.yaml"
    wheels = list(path.parent.glob("crfm_helm-0.5.16-*.whl"))
    assert len(wheels) == 1
    with zipfile.ZipFile(wheels[0]) as zf:
        assert path.read_bytes() == zf.read(HELM_METADATA_MEMBER)


def test_small_metadata_file(tmp_path: Path) -> None:
    meta = tmp_path / "meta.yaml"
    meta.write_text(
        """
models:
  - name: z/model
    display_name: Zed (7B)
    description: Zed is trained on 2T tokens ([paper](https://x.org/a_(b)), [blog](https://x.org/b)).
    creator_organization_name: Zorg
    num_parameters: 7241748480
    release: 2024-6-5
  - name: a/model
    display_name: Alpha
    description: "Alpha uses `BLOCK_NONE`. See [the docs](https://x.org/d) and ([paper](https://x.org/p) more"
    creator_organization_name: Aorg
    num_parameters: 0
    release_date: 2023-01-02
  - name: a/model
    display_name: Alpha again
    description: dropped, the name is taken
    creator_organization_name: Aorg
  - name: e/empty
    display_name: Empty
    description: "   "
    creator_organization_name: Eorg
""",
        encoding="utf-8",
    )
    out = build_demo_corpus(tmp_path / "out", metadata_path=meta)
    rows = [json.loads(line) for line in (out / CORPUS_FILENAME).read_text(encoding="utf-8").splitlines()]
    assert rows == [
        {
            "id": "a/model",
            "text": "Alpha was created by Aorg and released on January 2, 2023. "
            "Alpha uses BLOCK_NONE. See the docs and more.",
            "title": "Alpha",
            "creator": "Aorg",
            "release_date": "2023-01-02",
            "num_parameters": None,
        },
        {
            "id": "z/model",
            "text": "Zed (7B) was created by Zorg and released on June 5, 2024. "
            "It has about 7.24 billion parameters. Zed is trained on 2T tokens.",
            "title": "Zed (7B)",
            "creator": "Zorg",
            "release_date": "2024-06-05",
            "num_parameters": 7_241_748_480,
        },
    ]


def test_helpers() -> None:
    assert parameters_in_words(8_000_000_000) == "8 billion"
    assert parameters_in_words(46_700_000_000) == "46.7 billion"
    assert parameters_in_words(2_517_652_480) == "about 2.52 billion"
    assert parameters_in_words(999_900_000_000) == "about 1 trillion"
    assert parameters_in_words(350_000_000) == "350 million"
    assert parameters_in_words(1_029_173_256_720) == "about 1.03 trillion"
    assert parameters_in_words(512) == "512"
    assert clean_description("A [link](https://a.b/c) here. Wait...") == "A link here. Wait..."
    assert clean_description("Model (GPT-4) ([docs](u), [paper](v)).") == "Model (GPT-4)."


def test_fetch_errors_are_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DemoDataError, match=r"pip download crfm-helm==0\.0\.0\.dev0 failed \(exit \d+\)"):
        fetch_wheel("crfm-helm==0.0.0.dev0", tmp_path / "dl")
    with pytest.raises(ValueError, match="pinned"):
        fetch_wheel("crfm-helm", tmp_path / "dl")

    # A wheel without the metadata file: named like the real one so no download happens.
    monkeypatch.setenv("RAGBATCH_HOME", str(tmp_path / "home"))
    fake = tmp_path / "home" / "downloads" / "crfm_helm-0.5.16-py3-none-any.whl"
    fake.parent.mkdir(parents=True)
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr("helm/__init__.py", "")
    with pytest.raises(DemoDataError, match="has no helm/config/model_metadata.yaml"):
        fetch_helm_metadata()

    # A truncated download is fetched again rather than trusted.
    fake.write_bytes(b"PK\x03\x04 truncated")
    path = fetch_helm_metadata()
    assert zipfile.is_zipfile(fake) and path.stat().st_size > 100_000
    assert not [p for p in os.listdir(fake.parent) if p.endswith(".tmp")]
