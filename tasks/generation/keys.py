"""An answer's cache key: the hash of everything that decides what the generator writes.

- the exact prompt: its token ids (the question, and for the RAG arm the passages in rank order, under the
  prompt template; the template's name is hashed too, so two templates never share an answer by accident);
- the generator's weights and configuration (tasks/models/weights.py, ``config.json``, ``generation_config.json``);
- the settings that change the output: ``max_new_tokens``, the dtype (greedy decoding has no other);
- the numerics (``Generator.numerics``: tasks/device.py ``numerics_id``, that is device kind, CPU kernels, torch,
  thread count; and whether the linear layers run on oneDNN-packed weights, tasks/invariant.py).

Batch size, token budget and batch order are left out on purpose: answers do not depend on them (the
determinism guarantee, tests/test_generate.py). Snapping and citation marks are applied after the cache, so
they never need a key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tasks.cache import ProcessCache
from tasks.models.weights import weights_sha256

_GENERATOR_IDS: ProcessCache[str] = ProcessCache()


def generator_id(path: Path | str) -> str:
    """sha256 of a generator folder's weights and its configuration files (once per process and folder)."""
    folder = Path(path)

    def compute() -> str:
        h = hashlib.sha256(weights_sha256(folder).encode())
        for name in ("config.json", "generation_config.json"):
            f = folder / name
            h.update(name.encode() + (f.read_bytes() if f.exists() else b"-"))
        return h.hexdigest()

    return _GENERATOR_IDS.get(str(folder.resolve()), compute)


def answer_key(prompt_ids: list[int], generator: str, template: str, max_new_tokens: int, dtype: str,
               numerics: str) -> str:
    """The key of one answer (64 hex digits): equal keys mean byte-identical answers."""
    body = json.dumps([prompt_ids, generator, template, max_new_tokens, dtype, numerics], separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()
