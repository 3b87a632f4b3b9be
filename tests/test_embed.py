"""Embedders are configuration: pooling and normalization come from the model folder, checked at load."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tasks.device import cpu_has_native_bf16
from tasks.indexing.embed import EmbedderConfigError, embedding_dtype, load_embedder, resolve_embedder

TEXTS = [
    "Llama 3 was pretrained on over 15 trillion tokens of data from publicly available sources.",
    "Llama 2 pretrained models are trained on 2 trillion tokens.",
    "Bananas are yellow.",
    "A much longer passage " * 20,
]


@pytest.fixture(scope="session")
def bge_shaped(tmp_path_factory, minilm):
    """A BERT with bge-small-en-v1.5's configuration and random weights, saved in sentence-transformers layout."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("bge")
    bert_dir = root / "hf"
    cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=1536, max_position_embeddings=512)
    BertModel(cfg).save_pretrained(bert_dir)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(f"{minilm.path}/{f}", bert_dir / f)
    word = models.Transformer(str(bert_dir), max_seq_length=512)
    pool = models.Pooling(384, pooling_mode="cls")
    st = SentenceTransformer(modules=[word, pool, models.Normalize()], device="cpu")
    out = root / "bge-small-random"
    st.save(str(out))
    return out


def test_minilm_settings_come_from_its_folder(minilm):
    assert (minilm.pooling, minilm.normalize, minilm.max_length, minilm.dim) == ("mean", True, 256, 384)
    assert minilm.query_prefix == "" and len(minilm.weights_sha256) == 64


def test_minilm_matches_sentence_transformers_and_is_unit_norm(minilm):
    from sentence_transformers import SentenceTransformer

    model = load_embedder(minilm, "cpu", "float32")  # the same dtype as the reference
    ours = model.embed_passages(TEXTS)
    assert torch.allclose(ours.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-3)
    ref = SentenceTransformer(minilm.path, device="cpu").encode(TEXTS, normalize_embeddings=True,
                                                                convert_to_tensor=True)
    assert (ours * ref).sum(1).min() >= 0.9999
    q = model.embed_queries(["How many tokens was Llama 3 trained on?"])
    scores = (q @ ours[:3].T)[0]
    assert min(scores[0], scores[1]) > scores[2] + 0.4  # related passages far above the unrelated one


def test_bge_shaped_cls_path_matches_sentence_transformers(bge_shaped):
    from sentence_transformers import SentenceTransformer

    config = resolve_embedder(str(bge_shaped))
    assert (config.pooling, config.normalize, config.max_length, config.dim) == ("cls", True, 512, 384)
    ours = load_embedder(config, "cpu", "float32").embed_passages(TEXTS)
    ref = SentenceTransformer(str(bge_shaped), device="cpu").encode(TEXTS, normalize_embeddings=True,
                                                                    convert_to_tensor=True)
    cos = (ours * ref).sum(1)
    assert cos.min() >= 0.9999, cos
    assert torch.allclose(ours.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-3)


def test_auto_dtype_keeps_quality(minilm, minilm_model):
    """``auto`` may embed in bfloat16 (CPUs with native bf16): it must stay within cosine 0.999 of float32."""
    assert minilm_model.dtype == embedding_dtype("cpu")
    assert minilm_model.dtype == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    full = load_embedder(minilm, "cpu", "float32")
    for texts, embed in ((TEXTS, "embed_passages"), (["How many tokens was Llama 3 trained on?"], "embed_queries")):
        a, b = getattr(minilm_model, embed)(texts), getattr(full, embed)(texts)
        assert (a * b).sum(1).min() >= 0.999
        assert torch.allclose(a.norm(dim=1), torch.ones(len(texts)), atol=1e-3)


def test_bge_preset_supplies_the_query_instruction(bge_shaped, tmp_path):
    # The hub name carries BGE's query instruction as a preset; a local copy gets it by override.
    config = resolve_embedder(str(bge_shaped), query_prefix="Represent this sentence for searching relevant passages: ")
    model = load_embedder(config, "cpu")
    with_prefix = model.embed_queries(["what is rag"])
    without = model.encode(["what is rag"], prefix="")
    assert not torch.allclose(with_prefix, without)


def test_local_copy_named_like_bge_gets_its_query_instruction(bge_shaped, tmp_path):
    local = tmp_path / "bge-small-en-v1.5"
    shutil.copytree(bge_shaped, local)
    config = resolve_embedder(str(local))
    assert config.query_prefix == "Represent this sentence for searching relevant passages: "
    assert config.pooling == "cls" and config.passage_prefix == ""


def test_wrong_pooling_is_a_different_fingerprint(minilm):
    cls = resolve_embedder("all-MiniLM-L6-v2", pooling="cls")
    assert cls.pooling == "cls" and cls.fingerprint["id"] != minilm.fingerprint["id"]


def test_unknown_pooling_is_an_error_at_load(tmp_path, minilm):
    folder = tmp_path / "plain-bert"
    shutil.copytree(minilm.path, folder)
    (folder / "modules.json").unlink()
    (folder / "sentence_bert_config.json").unlink()
    with pytest.raises(EmbedderConfigError, match="pooling None is not known"):
        resolve_embedder(str(folder))
    assert resolve_embedder(str(folder), pooling="mean").pooling == "mean"
    pool = json.loads((tmp_path / "plain-bert" / "1_Pooling" / "config.json").read_text())
    pool["pooling_mode_cls_token"] = True  # two modes selected: ambiguous
    shutil.copytree(minilm.path, tmp_path / "two")
    (tmp_path / "two" / "1_Pooling" / "config.json").write_text(json.dumps(pool))
    with pytest.raises(EmbedderConfigError, match="need exactly one"):
        resolve_embedder(str(tmp_path / "two"))


def test_max_length_beyond_positions_is_refused(minilm):
    with pytest.raises(EmbedderConfigError, match="exceeds its 512 position embeddings"):
        resolve_embedder("all-MiniLM-L6-v2", max_length=1024)


@pytest.mark.parametrize("dtype", ["auto", "float32"])
def test_an_embedding_does_not_depend_on_its_batch(minilm, dtype):
    """Bit for bit, on any CPU kind: a resumed index run batches the remaining chunks differently from a clean
    run, and a query is embedded alone or with others (row-wise attention, fixed row tiles, per-row pooling)."""
    import random

    model = load_embedder(minilm, "cpu", dtype)
    assert model.exact
    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog while Llama 3 reads 15 trillion tokens".split()
    texts = TEXTS + [" ".join(rng.choice(words) for _ in range(rng.randint(2, 200))) for _ in range(40)]
    together = model.embed_passages(texts)
    alone = torch.cat([model.embed_passages([t]) for t in texts])
    reversed_small = model.embed_passages(texts[::-1], batch_tokens=2000).flip(0)
    for other in (alone, reversed_small):
        assert torch.equal(together, other), float((together - other).abs().max())
    assert torch.equal(model.embed_queries(texts[:1]), model.embed_queries(texts[:9])[:1])
