"""Batch-invariant linear layers: a row's result never depends on how many rows share its matmul.

Why: oneDNN chooses its bf16 GEMM kernel and blocking from the call's shape. On the Intel Xeon with AMX
(``benchmarks/RESULTS.md``, "Determinism"), a row of ``x[:M] @ W.T`` differs in its last bits from the same row
inside a larger call for most M between 1 and 96, and for many large M too (128, 256, 4096 on Qwen-0.5B's MLP):
so the same prompt got another answer in another batch, and a resumed index run stored other embeddings than
a clean one. On the AMD Zen 4 the kernels happened to agree for the shapes measured, which is luck, not a rule.

How: every linear call on the CPU runs as a sequence of calls of exactly ``tile`` rows, the
last one padded with zero rows. One call shape means one kernel, and within a tile a row's result does not
depend on its position or on its neighbours (measured for every Qwen, SmolLM2 and MiniLM shape, tiles of
16-128). So a row's output is a function of that row alone, on both CPU kinds, by construction.

Two tiles, because the two phases of a causal LM want different ones and each phase's calls are told apart
by their shape alone (never by the batch): a call over one position per row (``[..., 1, k]``: decoding, and
the LM head, which HF applies to the last position only) uses the small ``decode_tile``, since padding a
4-row decode step to 256 rows would cost 6x; every other call (prefill, an encoder) uses ``prefill_tile``,
large enough that a tile reads its weights once for many rows. What each costs is measured in
``benchmarks/determinism.py``.

Packed weights (:func:`pack_weights`): a plain bfloat16 ``F.linear`` has oneDNN reorder the whole weight into its
blocked layout on every call, so cutting a prefill into 256-row calls paid that reorder once per tile (Qwen-0.5B's
MLP up-projection over 5,120 rows: 77 ms in tiles, 35 ms as one call). A weight reordered once and multiplied by
``torch.ops.mkldnn._linear_pointwise`` (what Inductor's CPU freezing pass emits) costs what one call does, and its
results are the same: bit-identical to ``F.linear`` for every Qwen, SmolLM2 and MiniLM shape at 16, 256 and 1,024
rows on the Intel AMX machine, except MiniLM's 1,536 → 384 at 256 rows; and a row's result does not depend on its
position or neighbours in the call (benchmarks/RESULTS.md, "Packed weights"). Whether a model runs packed is part
of its answers' numerics (``tasks.generation.generate.Generator.numerics``), so a cached answer is never served
across the two.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from tasks.device import memory_bytes

# Chosen in benchmarks/determinism.py (Intel AMX, Qwen-0.5B bf16 prefill and decode): see benchmarks/RESULTS.md.
PREFILL_TILE = 256
DECODE_TILE = 16
EMBED_TILE = 1024  # an encoder's calls are all "prefill": large tiles cost it least
# Packed copies may take at most this share of the machine's RAM (MemTotal: fixed per machine, so whether a
# model runs packed never changes between runs): Qwen-0.5B's 0.99 GB packs on a 24 GiB machine, a 7B model does
# not, where a second copy of 14 GB of weights would not fit.
PACKED_SHARE = 0.25


class TiledLinear(torch.nn.Linear):
    """An ``nn.Linear`` whose forward always multiplies in fixed tiles of rows (module docstring).

    Installed by swapping the class of an existing layer, so weights, ``state_dict`` and ``save_pretrained``
    are untouched.
    """

    prefill_tile: int = PREFILL_TILE
    decode_tile: int = DECODE_TILE
    packed: tuple[tuple[int, torch.dtype, int], torch.Tensor] | None = None  # (the weight it came from, the copy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        one_position = x.dim() < 3 or x.shape[-2] == 1
        packed = self.packed[1] if self.packed and self.packed[0] == _identity(self.weight) else None
        return tiled_linear(x, self.weight, self.bias, self.decode_tile if one_position else self.prefill_tile,
                            packed)


def _identity(weight: torch.Tensor) -> tuple[int, torch.dtype, int]:
    """What a packed copy must still match: a model moved or cast after packing has new weight tensors, and one
    whose weights were written in place (``load_state_dict``) has a new version of them; either way its layers
    fall back to ``F.linear`` instead of multiplying stale weights."""
    return weight.data_ptr(), weight.dtype, weight._version


def tiled_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, tile: int,
                 packed: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` computed as calls of exactly ``tile`` rows each (with ``packed``, the weight
    as :func:`pack_weights` reordered it).

    Full tiles are views of ``x`` written into one preallocated output; only the last, partial tile is copied
    and padded with zero rows (an earlier version padded and concatenated everything: 1.2-4x slower).
    """
    linear = F.linear if packed is None else functools.partial(_packed_linear, packed)
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])
    rows = flat.shape[0]
    full = rows - rows % tile
    if full == rows == tile:
        return linear(flat, weight, bias).reshape(*lead, weight.shape[0])
    out = flat.new_empty(rows, weight.shape[0])
    for i in range(0, full, tile):
        out[i : i + tile] = linear(flat[i : i + tile], weight, bias)
    if full < rows:
        last = flat.new_zeros(tile, flat.shape[1])
        last[: rows - full] = flat[full:]
        out[full:] = linear(last, weight, bias)[: rows - full]
    return out.reshape(*lead, weight.shape[0])


def needs_tiles(device: str) -> bool:
    """Where fixed tiles are what makes batching exact: on a CPU, in every dtype.

    float32 needs them too: its kernels also vary by row count (a one-row gemv, up to 1.4e-7 between batch plans
    of MiniLM), and there they cost 1.0-1.07x (benchmarks/RESULTS.md). On CUDA nothing is promised: cuBLAS picks
    kernels by shape too, and a GPU run is compared within tolerance, not bit for bit.
    """
    return device == "cpu"


def make_batch_invariant(model: torch.nn.Module, prefill_tile: int = PREFILL_TILE,
                         decode_tile: int = DECODE_TILE) -> int:
    """Turn every ``nn.Linear`` of ``model`` into a :class:`TiledLinear`; returns how many were turned."""
    if prefill_tile < 1 or decode_tile < 1:
        raise ValueError("tiles must be >= 1 row")
    n = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.__class__ = TiledLinear
            module.prefill_tile, module.decode_tile = prefill_tile, decode_tile
            n += 1
    return n


def _packed_linear(packed: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(rows, weight, bias)`` computed from ``packed``, oneDNN's reordered copy of ``weight`` (which is
    not read)."""
    return torch.ops.mkldnn._linear_pointwise(rows, packed, bias, "none", [], "")


def can_pack(weight: torch.Tensor) -> bool:
    """Where :func:`pack_weights` applies: bfloat16 weights on a CPU whose torch has oneDNN. (float32 is left out:
    its packed path measured slower on the Intel AMX machine, 11.8 vs 9.5 ms for a 256-row MLP tile, and not
    bit-identical.)"""
    return (weight.device.type == "cpu" and weight.dtype == torch.bfloat16
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


@torch.no_grad()
def pack_weights(model: torch.nn.Module, share: float = PACKED_SHARE) -> int:
    """Give every :class:`TiledLinear` of ``model`` a copy of its weight in oneDNN's blocked layout (module
    docstring), when all copies together fit ``share`` of the machine's RAM; returns how many layers were packed
    (0: none, the model is left as it was). The ``nn.Linear`` weights stay as they are, for ``state_dict``."""
    layers = [m for m in model.modules() if isinstance(m, TiledLinear) and can_pack(m.weight)]
    need = sum(m.weight.numel() * m.weight.element_size() for m in layers)
    total = memory_bytes("MemTotal")
    if not layers or total is None or need > share * total:
        return 0
    for m in layers:
        m.packed = (_identity(m.weight), torch.ops.mkldnn._reorder_linear_weight(m.weight, m.prefill_tile))
    return len(layers)
