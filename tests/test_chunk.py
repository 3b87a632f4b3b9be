"""Chunking with the embedder's own tokenizer: no chunk can be truncated when it is embedded."""

from __future__ import annotations

import random

import pytest

from tasks.ingest.chunk import ChunkingError, ChunkSettings, chunk_text, content_budget


def _long_text(n_words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    vocab = ["retrieval", "augmented", "generation", "antidisestablishmentarianism", "GQA", "15", "trillion",
             "tokens,", "Llama-3", "über", "naïve", "déjà-vu", "(parenthesised)", "x" * 40, "日本語", "🙂"]
    return " ".join(rng.choice(vocab) for _ in range(n_words))


@pytest.mark.parametrize("size,overlap", [(200, 32), (64, 16), (254, 0)])
def test_no_chunk_exceeds_max_length_and_spans_match(minilm, minilm_model, size, overlap):
    tok = minilm_model.tokenizer
    text = _long_text(1500)
    chunks = chunk_text("doc", "sha", text, tok, ChunkSettings(size, overlap), minilm.max_length)
    assert len(chunks) > 3
    for c in chunks:
        full = tok(c.text, add_special_tokens=True, truncation=False)["input_ids"]
        assert len(full) <= minilm.max_length, "this chunk would be truncated by the embedder"
        assert text[c.char_start:c.char_end] == c.text
        assert c.n_tokens == len(tok(c.text, add_special_tokens=False)["input_ids"])
        assert c.chunk_id == f"doc#{c.chunk_index}"
    # Chunks cover the whole document in order: each starts inside (overlap) or right after the previous.
    assert chunks[0].char_start == 0 and chunks[-1].char_end == len(text.rstrip())
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert a.char_start < b.char_start
        assert b.char_start <= a.char_end or text[a.char_end:b.char_start].strip() == ""
        if overlap == 0:
            assert b.char_start >= a.char_end
    # Embedding every chunk passes the embedder's own no-truncation check.
    minilm_model.embed_passages([c.text for c in chunks[:4]])


def test_prefix_counts_against_the_budget(minilm_model):
    tok = minilm_model.tokenizer
    prefix = "Represent this sentence for searching relevant passages: "
    budget = content_budget(tok, 64, prefix)
    assert budget == 64 - 2 - len(tok(prefix, add_special_tokens=False)["input_ids"])
    chunks = chunk_text("d", "s", _long_text(400, 1), tok, ChunkSettings(budget, 8), 64, prefix)
    for c in chunks:
        assert len(tok(prefix + c.text)["input_ids"]) <= 64


def test_chunk_size_beyond_the_model_is_refused(minilm, minilm_model):
    with pytest.raises(ChunkingError, match="exceeds what the embedder can take: 254 tokens"):
        chunk_text("d", "s", "some text", minilm_model.tokenizer, ChunkSettings(300, 10), minilm.max_length)


def test_embedder_refuses_to_truncate_passages(minilm_model):
    from tasks.indexing.embed import PassageTooLongError

    with pytest.raises(PassageTooLongError, match="exceed the embedder's max length 256"):
        minilm_model.embed_passages([_long_text(600)])
    q = minilm_model.embed_queries([_long_text(600)])  # queries are truncated, with a warning
    assert q.shape == (1, 384)


def test_short_and_whitespace_documents(minilm, minilm_model):
    tok = minilm_model.tokenizer
    one = chunk_text("d", "s", "Just one line.", tok, ChunkSettings(), minilm.max_length)
    assert [(c.text, c.char_start, c.char_end) for c in one] == [("Just one line.", 0, 14)]
    assert chunk_text("d", "s", "   \n ", tok, ChunkSettings(), minilm.max_length) == []


@pytest.mark.parametrize("window", [3000, 900])
def test_windowed_tokenization_gives_the_chunks_of_one_pass(minilm, minilm_model, window):
    """Huge documents are tokenized a window at a time (bounded memory): the chunks must not change."""
    text = "\n\n".join(_long_text(400, seed) for seed in range(6)) + "   trailing " + "x" * 300
    args = ("d", "h", text, minilm_model.tokenizer, ChunkSettings(64, 16), minilm.max_length, minilm.passage_prefix)
    whole = chunk_text(*args, window_chars=10**9)
    windowed = chunk_text(*args, window_chars=window)
    assert len(whole) > 20
    assert [c.__dict__ for c in windowed] == [c.__dict__ for c in whole]
