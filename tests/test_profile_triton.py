"""The profile's rig through the engine's Triton kernels (the GPU path), here under TRITON_INTERPRET=1 on CPU:
the ForwardBatches it builds must be ones the real kernels accept, at every SM budget, and give the
reference's answers."""

import pytest
import torch

from engine.kernels.testing import triton_test_device

DEVICE = triton_test_device()
pytestmark = pytest.mark.skipif(DEVICE is None, reason="triton is not importable here")


@pytest.fixture(scope="module")
def rig():
    from engine.presets import get_preset
    from nanotune.profile.ops import shard, shard_config
    from nanotune.profile.rig import LayerRig

    cfg = get_preset("tiny-llama-micro")
    s = shard(cfg, 1)
    dtype = torch.bfloat16
    return s, LayerRig(shard_config(cfg, s, 3), torch.device(DEVICE), dtype, num_kv_blocks=64, max_tokens=64,
                       num_workspaces=3, backend="triton")


def test_every_op_at_every_point_through_triton(rig):
    from nanotune.profile.measure import measure_ops, op_points, tiny_grid
    from nanotune.profile.timing import Timer

    s, r = rig
    assert r.kernels == "triton"
    grid = tiny_grid()
    errors = []
    ops = measure_ops(r, Timer(torch.device(DEVICE), warmup=1, repeats=1), s, grid, 1 << 20, lambda op: None, errors)
    assert errors == []
    assert {op: len(e["points"]) for op, e in ops.items()} == {op: len(op_points(grid, op)) for op in ops}


def _attn_rows(r, op, rows, fb, budget, kernels=None):
    m = r.model
    saved = m.k
    m.k = kernels or saved
    m.ws = r.workspaces[0]
    try:
        m.ops[op](1, 0, rows, fb, budget)
    finally:
        m.k = saved
    return m.ws.attn[:rows].float().clone()


@pytest.mark.parametrize("budget", [1, 2, None])
def test_decode_batches_match_the_reference(rig, budget):
    from engine.kernels import TORCH_OPS

    _, r = rig
    (fb,) = r.decode_batches(4, 40, 1)
    out = _attn_rows(r, "decode_attn", 4, fb, budget)
    ref = _attn_rows(r, "decode_attn", 4, fb, None, TORCH_OPS)
    assert (out - ref).abs().max() <= 2e-2 * ref.abs().max()


def test_prefill_batches_match_the_reference(rig):
    from engine.kernels import TORCH_OPS

    _, r = rig
    (fb,) = r.prefill_batches(16, 16, 2, 1)
    out = _attn_rows(r, "prefill_attn", 16, fb, None)
    ref = _attn_rows(r, "prefill_attn", 16, fb, None, TORCH_OPS)
    assert (out - ref).abs().max() <= 2e-2 * ref.abs().max()
