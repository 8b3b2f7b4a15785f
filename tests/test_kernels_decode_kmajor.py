"""Token-major decode attention variant (engine/kernels/decode_attention_kmajor.py) against the torch reference.

Triton kernels run under TRITON_INTERPRET=1 on CPU (compiled on a GPU). Every output is poisoned with NaN
first, so an element the kernel forgot to write fails the check.
"""

import importlib

import pytest
import torch

from engine.kernels import decode_attention as da
from engine.kernels.testing import assert_close, make_paged_kv, triton_test_device

DEV = triton_test_device()  # "cuda", "cpu" (interpreter; reloads engine.kernels if needed) or None
needs_triton = pytest.mark.skipif(DEV is None, reason="triton is not installed")
if DEV is not None:
    da = importlib.import_module("engine.kernels.decode_attention")  # the module triton_test_device may reload
    # triton_test_device does not know this module: reload it so that its kernel is an interpreted one and it
    # takes the (possibly reloaded) reduce kernel and helpers from the current engine.kernels.decode_attention
    dk = importlib.reload(importlib.import_module("engine.kernels.decode_attention_kmajor"))


def _case(ctx_lens, num_heads, num_kv_heads, head_dim, block_size, dtype, seed):
    torch.manual_seed(seed)
    k_cache, v_cache, bt, _, _ = make_paged_kv(ctx_lens, num_kv_heads, head_dim, block_size, dtype, DEV)
    q = torch.randn(len(ctx_lens), num_heads, head_dim).to(dtype).to(DEV)
    ctx = torch.tensor(ctx_lens, dtype=torch.int32, device=DEV)
    return q, k_cache, v_cache, bt, ctx


@needs_triton
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("head_dim,block_size", [(32, 16), (64, 32)])
@pytest.mark.parametrize("splits,max_programs", [(None, None), (1, None), (1, 2), (3, None), (4, 2)])
def test_kmajor_matches_ref(group, head_dim, block_size, splits, max_programs):
    # lengths: empty, 1 token, exactly one page, an exact multiple of the page, ragged ones over several splits
    ctx_lens = [0, 1, block_size, 3 * block_size, 37, 130]
    q, kc, vc, bt, ctx = _case(ctx_lens, 2 * group, 2, head_dim, block_size, torch.float32,
                               seed=100 * group + head_dim + block_size)
    ref = da.decode_attention_ref(q, kc, vc, bt, ctx, 0.3)
    out = torch.full_like(q, float("nan"))
    # small tiles and windows of 4 pages: several loop trips and several page windows per work item
    cfg = da.DecodeConfig(block_n=32, num_warps=4, num_stages=2, window_pages=4)
    res = dk.decode_attention_kmajor(
        q, kc, vc, bt, ctx, 0.3, out=out, num_splits=splits, max_programs=max_programs, config=cfg
    )
    assert res is out
    assert_close(out, ref, torch.float32)
    assert torch.all(out[0] == 0)  # empty context -> zeros, in the direct and the split path


@needs_triton
@pytest.mark.parametrize("max_programs", [None, 2])
def test_kmajor_default_config_matches_original(max_programs):
    # default config (auto splits, auto tiles) and no `out`: same result as decode_attention
    ctx_lens = [0, 1, 16, 45, 200]
    q, kc, vc, bt, ctx = _case(ctx_lens, 8, 2, 64, 16, torch.float32, seed=5)
    out = dk.decode_attention_kmajor(q, kc, vc, bt, ctx, 0.125, max_programs=max_programs)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert_close(out, da.decode_attention_ref(q, kc, vc, bt, ctx, 0.125), torch.float32)
    assert_close(out, da.decode_attention(q, kc, vc, bt, ctx, 0.125, max_programs=max_programs), torch.float32)
    assert torch.all(out[0] == 0)


@needs_triton
def test_kmajor_no_sequences():
    q = torch.randn(0, 4, 32, device=DEV)
    kc = torch.randn(3, 2, 16, 32, device=DEV)
    bt = torch.zeros(0, 1, dtype=torch.int32, device=DEV)
    ctx = torch.zeros(0, dtype=torch.int32, device=DEV)
    assert dk.decode_attention_kmajor(q, kc, kc.clone(), bt, ctx, 0.1).shape == (0, 4, 32)
