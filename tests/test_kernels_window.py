"""Sliding-window attention (Mistral / Qwen2): the torch references against float64 naive attention with the
window, the Triton kernels (interpreter on CPU, compiled on a GPU) against the references, and on a GPU the
Mistral-7B shapes (32 heads, 8 kv heads, head_dim 128, window 4096) with contexts past the window.

Caches come from make_paged_kv: unwritten slots are NaN and outputs are NaN-poisoned, so a kernel that reads
past a context or leaves an element unwritten fails. Keys below the window are real values: a kernel that
ignores the window gives a different answer, not a NaN.
"""

import random

import pytest
import torch

from engine.kernels import decode_attention as da
from engine.kernels import prefill_attention as pa
from engine.kernels.testing import assert_close, make_paged_kv, naive_attention_f64, triton_test_device

DEV = triton_test_device()
needs_triton = pytest.mark.skipif(DEV is None, reason="triton is not installed")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _decode(ctx_lens, heads, kv_heads, head_dim, block_size, dtype, device, seed):
    torch.manual_seed(seed)
    kc, vc, bt, dk, dv = make_paged_kv(ctx_lens, kv_heads, head_dim, block_size, dtype, device, seed=seed)
    q = torch.randn(len(ctx_lens), heads, head_dim, device=device).to(dtype)
    return q, kc, vc, bt, torch.tensor(ctx_lens, dtype=torch.int32, device=device), dk, dv


def _prefill(chunks, heads, kv_heads, head_dim, block_size, dtype, device, seed):
    """chunks: (prior context, chunk length) per sequence."""
    torch.manual_seed(seed)
    seq_lens = [p + c for p, c in chunks]
    kc, vc, bt, dk, dv = make_paged_kv(seq_lens, kv_heads, head_dim, block_size, dtype, device, seed=seed)
    q_lens = [c for _, c in chunks]
    q = torch.randn(sum(q_lens), heads, head_dim, device=device).to(dtype)
    cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device=device)
    return q, kc, vc, bt, torch.tensor(seq_lens, dtype=torch.int32, device=device), cu, dk, dv, max(q_lens)


@pytest.mark.parametrize("window", [1, 7, 16, 50])
def test_decode_ref_window_matches_naive(window):
    ctx_lens = [1, 6, 7, 8, 33, 120]
    q, kc, vc, bt, ctx, dk, dv = _decode(ctx_lens, 4, 2, 32, 16, torch.float32, "cpu", seed=window)
    out = da.decode_attention_ref(q, kc, vc, bt, ctx, 0.2, window=window)
    naive = torch.cat([naive_attention_f64(q[s:s + 1], dk[s], dv[s], torch.tensor([n - 1]), 0.2, window)
                       for s, n in enumerate(ctx_lens)])
    assert_close(out, naive, torch.float32)
    if window < 100:  # the window changes the answer (so the check above could fail)
        assert not torch.allclose(out, da.decode_attention_ref(q, kc, vc, bt, ctx, 0.2), atol=1e-3)


@pytest.mark.parametrize("window", [1, 9, 40])
def test_prefill_ref_window_matches_naive(window):
    chunks = [(0, 1), (0, 23), (40, 9), (15, 1), (100, 70)]
    q, kc, vc, bt, sl, cu, dk, dv, mq = _prefill(chunks, 4, 2, 32, 16, torch.float32, "cpu", seed=window)
    out = pa.prefill_attention_ref(q, kc, vc, bt, sl, cu, 0.2, max_seqlen_q=mq, window=window)
    naive = torch.cat([naive_attention_f64(q[int(cu[s]):int(cu[s + 1])], dk[s], dv[s],
                                           torch.arange(p, p + c), 0.2, window) for s, (p, c) in enumerate(chunks)])
    assert_close(out, naive, torch.float32)


@needs_triton
@pytest.mark.parametrize("window", [1, 20, 64, 100])
@pytest.mark.parametrize("splits,max_programs", [(None, None), (1, None), (3, None), (4, 5)])
def test_decode_triton_window(window, splits, max_programs):
    # contexts shorter than, equal to and past the window, windows that start mid-page and mid-tile
    ctx_lens = [1, 20, 21, 64, 75, 130, 200]
    q, kc, vc, bt, ctx, _, _ = _decode(ctx_lens, 8, 2, 32, 16, torch.float32, DEV, seed=window)
    ref = da.decode_attention_ref(q, kc, vc, bt, ctx, 0.3, window=window)
    out = torch.full_like(q, float("nan"))
    cfg = da.DecodeConfig(block_n=32, num_warps=4, num_stages=2, window_pages=4)
    da.decode_attention(q, kc, vc, bt, ctx, 0.3, out=out, num_splits=splits, max_programs=max_programs,
                        config=cfg, window=window)
    assert_close(out, ref, torch.float32)


@needs_triton
@pytest.mark.parametrize("window", [1, 5, 24, 64])
def test_prefill_triton_window(window):
    chunks = [(0, 1), (0, 45), (37, 9), (20, 40), (90, 3)]
    q, kc, vc, bt, sl, cu, _, _, mq = _prefill(chunks, 8, 2, 32, 16, torch.float32, DEV, seed=window)
    ref = pa.prefill_attention_ref(q, kc, vc, bt, sl, cu, 0.2, max_seqlen_q=mq, window=window)
    out = torch.full_like(q, float("nan"))
    pa.prefill_attention(q, kc, vc, bt, sl, cu, 0.2, max_seqlen_q=mq, out=out, window=window)
    assert_close(out, ref, torch.float32)


# ---- GPU, Mistral-7B shapes: 32 query heads, 8 kv heads, head_dim 128, window 4096, bf16 ----
W = 4096


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("max_programs", [None, 44])
def test_decode_mistral_7b_window(max_programs):
    rng = random.Random(0)
    ctx_lens = [1, W - 1, W, W + 1, W + 17, 2 * W + 100, 8192] + [rng.randint(1, 3 * W) for _ in range(25)]
    q, kc, vc, bt, ctx, _, _ = _decode(ctx_lens, 32, 8, 128, 16, torch.bfloat16, "cuda", seed=11)
    ref = da.decode_attention_ref(q, kc, vc, bt, ctx, 128**-0.5, window=W)
    for splits in (None, 1, 8):
        out = torch.full_like(q, float("nan"))
        da.decode_attention(q, kc, vc, bt, ctx, 128**-0.5, out=out, num_splits=splits, max_programs=max_programs,
                            window=W)
        assert_close(out, ref, torch.bfloat16)


@pytest.mark.gpu
@needs_cuda
def test_prefill_mistral_7b_window():
    chunks = [(0, 1), (0, 5000), (W - 100, 512), (2 * W, 2048), (6000, 333), (W, 1)]
    q, kc, vc, bt, sl, cu, _, _, mq = _prefill(chunks, 32, 8, 128, 16, torch.bfloat16, "cuda", seed=5)
    ref = pa.prefill_attention_ref(q, kc, vc, bt, sl, cu, 128**-0.5, max_seqlen_q=mq, window=W)
    out = torch.full_like(q, float("nan"))
    pa.prefill_attention(q, kc, vc, bt, sl, cu, 128**-0.5, max_seqlen_q=mq, out=out, window=W)
    assert_close(out, ref, torch.bfloat16)
