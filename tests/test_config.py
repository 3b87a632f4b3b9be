"""Settings are typed data: checked when built, saved and restored without loss, refused by name when wrong."""

from __future__ import annotations

import json

import pytest

from tasks.config import (
    ConfigError,
    GenerationConfig,
    IndexConfig,
    RetrievalConfig,
    from_dict,
    load_run_config,
    to_dict,
    with_changes,
)


@pytest.mark.parametrize("cls", [IndexConfig, RetrievalConfig, GenerationConfig])
def test_a_config_survives_json(cls) -> None:
    config = cls()
    assert from_dict(cls, json.loads(json.dumps(to_dict(config)))) == config


@pytest.mark.parametrize(("cls", "bad", "named"), [
    (RetrievalConfig, {"k": 0}, "k 0"),
    (RetrievalConfig, {"retriever": "fuzzy"}, "retriever 'fuzzy'"),
    (RetrievalConfig, {"matrix_dtype": "int4"}, "matrix_dtype 'int4'"),
    (RetrievalConfig, {"hybrid_weights": [1.0]}, "hybrid_weights"),
    (RetrievalConfig, {"hybrid_weights": [0, 0]}, "hybrid_weights"),
    (RetrievalConfig, {"rrf_k": "60"}, "rrf_k"),
    (RetrievalConfig, {"topk": 3}, "unknown RetrievalConfig setting(s) topk"),
    (GenerationConfig, {"dtype": "int8"}, "dtype 'int8'"),
    (GenerationConfig, {"max_new_tokens": 0}, "max_new_tokens 0"),
    (GenerationConfig, {"snap": "yes"}, "snap"),
    (IndexConfig, {"overlap_tokens": 200}, "overlap_tokens 200"),
    (IndexConfig, {"compact_dead_ratio": 1.5}, "compact_dead_ratio 1.5"),
])
def test_a_bad_setting_is_refused_by_name(cls, bad, named) -> None:
    with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace(")", r"\)")):
        from_dict(cls, bad, "run.config.json")


def test_changes_are_checked_and_none_keeps_the_value() -> None:
    base = RetrievalConfig(retriever="bm25", k=3)
    assert with_changes(base, k=None, rerank="none") == base
    assert with_changes(base, k=7).k == 7
    with pytest.raises(ConfigError, match="k -1"):
        with_changes(base, k=-1)
    assert RetrievalConfig(rerank="llm:smollm2-135m").name == "hybrid+llm:smollm2-135m"


def test_a_run_config_restores_its_sections(tmp_path) -> None:
    path = tmp_path / "results.config.json"
    saved = {"flow": "answer", "retrieval": to_dict(RetrievalConfig(k=3, hybrid_weights=(1.0, 0.5))),
             "generation": to_dict(GenerationConfig(max_new_tokens=12))}
    path.write_text(json.dumps(saved))
    run = load_run_config(path)
    assert run["retrieval"] == RetrievalConfig(k=3, hybrid_weights=(1.0, 0.5))
    assert run["generation"].max_new_tokens == 12 and run["flow"] == "answer"
    path.write_text('{"flow": "answer"}')
    with pytest.raises(ConfigError, match="no 'retrieval' and 'generation' sections"):
        load_run_config(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not a readable run config"):
        load_run_config(path)
