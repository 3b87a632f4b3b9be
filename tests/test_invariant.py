"""Fixed row tiles make a linear layer's rows independent of their batch (tasks/invariant.py), on any CPU kind.

Plain bf16 ``nn.Linear`` fails these checks on the Intel AMX machines (oneDNN picks its kernel by row count:
benchmarks/RESULTS.md, "Determinism"), so they test the mechanism itself, not the luck of one CPU's kernels.
"""

from __future__ import annotations

import pytest
import torch

from tasks.invariant import TiledLinear, can_pack, make_batch_invariant, pack_weights, tiled_linear

# (in, out) of the packaged models' layers: Qwen-0.5B MLP and attention, SmolLM2-135M MLP, MiniLM MLP.
SHAPES = [(896, 4864), (4864, 896), (896, 128), (576, 1536), (1536, 384)]


@pytest.mark.parametrize(("dtype", "packed"), [(torch.bfloat16, False), (torch.bfloat16, True), (torch.float32, False)])
@pytest.mark.parametrize(("k", "n"), SHAPES)
def test_a_rows_result_is_the_same_in_any_batch(k: int, n: int, dtype: torch.dtype, packed: bool) -> None:
    torch.manual_seed(k + n)
    layer = torch.nn.Linear(k, n).to(dtype)
    assert make_batch_invariant(layer, prefill_tile=64, decode_tile=16) == 1 and isinstance(layer, TiledLinear)
    if packed:
        if not can_pack(layer.weight):
            pytest.skip("this torch has no oneDNN to pack for")
        assert pack_weights(layer) == 1 and layer.packed is not None
    x = torch.randn(2, 150, k).to(dtype)
    with torch.inference_mode():
        whole = layer(x)  # one call over 300 rows ("prefill": several positions per row)
        for rows in (2, 7, 33, 64, 65, 149):  # another batch: fewer rows, other neighbours, other offsets
            part = layer(x[1:2, -rows:])
            assert torch.equal(part, whole[1:2, -rows:]), rows
        # Decode calls (one position per row) use the decode tile: the same row alone or with 20 others.
        step = x[:1, :1].expand(21, 1, k) + torch.arange(21, dtype=dtype).view(21, 1, 1)
        many = layer(step)
        for row in (0, 5, 20):
            assert torch.equal(layer(step[row : row + 1]), many[row : row + 1]), row
        # And it is the same linear map: within the dtype's rounding of the float64 product.
        exact = x.double() @ layer.weight.double().T + layer.bias.double()
        scale = float(exact.abs().max())
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        assert float((whole.double() - exact).abs().max()) / scale < tol


def test_tiles_pad_the_last_call_only_and_keep_shapes() -> None:
    w = torch.randn(8, 4)
    for rows in (1, 3, 4, 5, 12):
        x = torch.randn(rows, 4)
        assert tiled_linear(x, w, None, tile=4).shape == (rows, 8)
        assert torch.allclose(tiled_linear(x, w, None, tile=4), x @ w.T, atol=1e-5)
    with pytest.raises(ValueError, match="tiles"):
        make_batch_invariant(torch.nn.Linear(2, 2), prefill_tile=0)


def test_packing_needs_room_and_follows_the_weights() -> None:
    """Packed copies are made only where they fit the RAM share, and a layer whose weight was replaced after
    packing (a cast, a move) multiplies its new weight, never the stale copy."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 32).to(torch.bfloat16)
    make_batch_invariant(layer, prefill_tile=16, decode_tile=4)
    if not can_pack(layer.weight):
        pytest.skip("this torch has no oneDNN to pack for")
    assert pack_weights(layer, share=0.0) == 0 and layer.packed is None, "no room: left as it was"
    assert not can_pack(torch.zeros(2, 2)), "float32 is never packed"
    assert pack_weights(layer) == 1 and layer.packed is not None
    x = torch.randn(3, 20, 64).to(torch.bfloat16)
    with torch.no_grad():
        layer.weight.mul_(2)  # written in place (as load_state_dict does): the copy is stale
        assert torch.equal(layer(x), tiled_linear(x, layer.weight, layer.bias, 16))
    layer.float()  # new weight tensors: the packed bf16 copy no longer applies
    x = torch.randn(3, 20, 64)
    with torch.inference_mode():
        assert torch.equal(layer(x), tiled_linear(x, layer.weight, layer.bias, 16))
