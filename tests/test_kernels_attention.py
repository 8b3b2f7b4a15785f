"""Paged decode and chunked-prefill attention: torch references against a float64 dense naive attention,
Triton kernels (TRITON_INTERPRET=1 on CPU, compiled on a GPU) against the references.

Every kernel output is poisoned with NaN first, so an element the kernel forgot to write fails the check.
"""

import random

import pytest
import torch

from engine.kernels import decode_attention as da
from engine.kernels import prefill_attention as pa
from engine.kernels.testing import assert_close, make_paged_kv, naive_attention_f64, triton_test_device

DEV = triton_test_device()  # "cuda", "cpu" (interpreter; reloads the kernels if needed) or None
needs_triton = pytest.mark.skipif(DEV is None, reason="triton is not installed")
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _decode_case(ctx_lens, num_heads, num_kv_heads, head_dim, block_size, dtype, device, seed):
    torch.manual_seed(seed)
    k_cache, v_cache, bt, dk, dv = make_paged_kv(ctx_lens, num_kv_heads, head_dim, block_size, dtype, device)
    q = torch.randn(len(ctx_lens), num_heads, head_dim).to(dtype).to(device)
    ctx = torch.tensor(ctx_lens, dtype=torch.int32, device=device)
    return q, k_cache, v_cache, bt, ctx, dk, dv


def _decode_naive(q, dk, dv, ctx_lens, scale):
    rows = [
        naive_attention_f64(q[s : s + 1], dk[s], dv[s], torch.tensor([n - 1]), scale)
        for s, n in enumerate(ctx_lens)
    ]
    return torch.cat(rows)  # [S, H, D] float64


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("block_size", [16, 32])
def test_decode_ref_matches_naive(dtype, group, block_size):
    ctx_lens = [1, block_size, block_size + 1, 37, 300, 1000]
    q, kc, vc, bt, ctx, dk, dv = _decode_case(
        ctx_lens, 2 * group, 2, 64, block_size, dtype, "cpu", seed=group
    )
    out = da.decode_attention_ref(q, kc, vc, bt, ctx, 0.125)
    assert out.dtype == dtype and out.shape == q.shape
    assert_close(out, _decode_naive(q, dk, dv, ctx_lens, 0.125), dtype)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("splits,max_programs", [(None, None), (1, None), (3, None), (4, 5)])
def test_decode_triton_matches_ref(dtype, group, splits, max_programs):
    # lengths: 1 token, exactly one page, one past a page, many pages and several splits
    ctx_lens = [1, 16, 17, 75, 130]
    q, kc, vc, bt, ctx, _, _ = _decode_case(ctx_lens, 2 * group, 2, 32, 16, dtype, DEV, seed=7 * group)
    ref = da.decode_attention_ref(q, kc, vc, bt, ctx, 0.3)
    out = torch.full_like(q, float("nan"))
    # small tiles and windows of 4 pages: several loop trips and several page windows per work item
    cfg = da.DecodeConfig(block_n=32, num_warps=4, num_stages=2, window_pages=4)
    res = da.decode_attention(
        q, kc, vc, bt, ctx, 0.3, out=out, num_splits=splits, max_programs=max_programs, config=cfg
    )
    assert res is out
    assert_close(out, ref, dtype)


@needs_triton
def test_decode_triton_default_config_and_block32():
    # default config (auto splits, auto tiles), block_size 32, head_dim 128, an empty context gives zeros
    ctx_lens = [0, 1, 33, 200]
    q, kc, vc, bt, ctx, _, _ = _decode_case(ctx_lens, 8, 2, 128, 32, torch.float32, DEV, seed=3)
    out = da.decode_attention(q, kc, vc, bt, ctx, 0.1)
    assert_close(out, da.decode_attention_ref(q, kc, vc, bt, ctx, 0.1), torch.float32)
    assert torch.all(out[0] == 0)


def test_choose_num_splits():
    # many short sequences: one split; few long ones: split until every program has work; never tiny splits
    assert da.choose_num_splits(256, 8, 1024, 132) == 1
    assert da.choose_num_splits(1, 8, 8192, 132) == 32
    assert da.choose_num_splits(1, 8, 512, 132) == 2
    assert da.choose_num_splits(64, 8, 4096, 44) == 1
    assert da.choose_num_splits(4, 8, 100, 132) == 1


def _prefill_case(chunks, num_heads, num_kv_heads, head_dim, block_size, dtype, device, seed):
    """chunks: (prior context, chunk length) per sequence."""
    torch.manual_seed(seed)
    seq_lens = [p + c for p, c in chunks]
    k_cache, v_cache, bt, dk, dv = make_paged_kv(seq_lens, num_kv_heads, head_dim, block_size, dtype, device)
    q_lens = [c for _, c in chunks]
    q = torch.randn(sum(q_lens), num_heads, head_dim).to(dtype).to(device)
    cu = torch.tensor([0] + list(torch.tensor(q_lens).cumsum(0)), dtype=torch.int32, device=device)
    sl = torch.tensor(seq_lens, dtype=torch.int32, device=device)
    return q, k_cache, v_cache, bt, sl, cu, dk, dv, max(q_lens)


def _prefill_naive(q, dk, dv, cu, seq_lens, scale):
    outs = []
    for s, n in enumerate(seq_lens.tolist()):
        lo, hi = int(cu[s]), int(cu[s + 1])
        outs.append(naive_attention_f64(q[lo:hi], dk[s], dv[s], torch.arange(n - (hi - lo), n), scale))
    return torch.cat(outs)


PREFILL_CHUNKS = [(0, 1), (0, 23), (40, 9), (15, 1), (100, 70)]  # fresh prompts, chunks after a prefix


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("group", [1, 4, 8])
def test_prefill_ref_matches_naive(dtype, group):
    q, kc, vc, bt, sl, cu, dk, dv, mq = _prefill_case(
        PREFILL_CHUNKS, 2 * group, 2, 64, 16, dtype, "cpu", group
    )
    out = pa.prefill_attention_ref(q, kc, vc, bt, sl, cu, 0.125, max_seqlen_q=mq)
    assert_close(out, _prefill_naive(q, dk, dv, cu.cpu(), sl.cpu(), 0.125), dtype)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("group", [1, 4, 8])
def test_prefill_triton_matches_ref(dtype, group):
    chunks = [(0, 1), (0, 19), (37, 9), (20, 40)]
    q, kc, vc, bt, sl, cu, _, _, mq = _prefill_case(chunks, 2 * group, 2, 32, 16, dtype, DEV, seed=group)
    ref = pa.prefill_attention_ref(q, kc, vc, bt, sl, cu, 0.2, max_seqlen_q=mq)
    out = torch.full_like(q, float("nan"))
    pa.prefill_attention(q, kc, vc, bt, sl, cu, 0.2, max_seqlen_q=mq, out=out)
    assert_close(out, ref, dtype)


@needs_triton
def test_prefill_triton_more_sequences_than_a_chunk():
    """37 sequences: the kernel finds a program's sequence 16 at a time (S_CHUNK), so tiles of sequences in
    the second and third chunk, and chunk boundaries falling inside and between them, are all exercised."""
    rng = random.Random(3)
    chunks = [(rng.randint(0, 40), rng.randint(1, 12)) for _ in range(37)]
    q, kc, vc, bt, sl, cu, _, _, mq = _prefill_case(chunks, 4, 2, 32, 16, torch.float32, DEV, seed=7)
    ref = pa.prefill_attention_ref(q, kc, vc, bt, sl, cu, 0.2, max_seqlen_q=mq)
    out = torch.full_like(q, float("nan"))
    pa.prefill_attention(q, kc, vc, bt, sl, cu, 0.2, max_seqlen_q=mq, out=out)
    assert_close(out, ref, torch.float32)


# ---- GPU, Llama-3-8B shapes: 32 query heads, 8 kv heads, head_dim 128, bf16 ----


@gpu
@needs_cuda
@pytest.mark.parametrize("max_programs", [None, 16, 44])
def test_decode_llama3_8b_shapes(max_programs):
    rng = random.Random(0)
    ctx_lens = [1, 15, 16, 17, 8192] + [rng.randint(1, 4096) for _ in range(27)]
    q, kc, vc, bt, ctx, _, _ = _decode_case(ctx_lens, 32, 8, 128, 16, torch.bfloat16, "cuda", seed=11)
    ref = da.decode_attention_ref(q, kc, vc, bt, ctx, 128**-0.5)
    for splits in (None, 1, 8):
        out = torch.full_like(q, float("nan"))
        da.decode_attention(
            q, kc, vc, bt, ctx, 128**-0.5, out=out, num_splits=splits, max_programs=max_programs
        )
        assert_close(out, ref, torch.bfloat16)


@gpu
@needs_cuda
def test_prefill_llama3_8b_shapes():
    chunks = [(0, 1), (0, 2048), (2048, 2048), (6000, 512), (100, 333)]
    q, kc, vc, bt, sl, cu, _, _, mq = _prefill_case(chunks, 32, 8, 128, 16, torch.bfloat16, "cuda", seed=5)
    ref = pa.prefill_attention_ref(q, kc, vc, bt, sl, cu, 128**-0.5, max_seqlen_q=mq)
    out = torch.full_like(q, float("nan"))
    pa.prefill_attention(q, kc, vc, bt, sl, cu, 128**-0.5, max_seqlen_q=mq, out=out)
    assert_close(out, ref, torch.bfloat16)
