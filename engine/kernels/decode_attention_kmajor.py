"""Paged decode attention with token-major (transposed) products: a variant of decode_attention to measure.

Same work items, split-KV, persistent grid, page-id window and second-pass reduce as
engine.kernels.decode_attention (read its docstring first); only the orientation of the two products changes:

    decode_attention:  s   = q @ k^T        [G_PAD, BLOCK_N]   acc   = p @ v          [G_PAD, D]
    this file:         s^T = k @ q^T        [BLOCK_N, G_PAD]   acc^T = v^T @ p^T      [D, G_PAD]

Why: on Hopper, Triton emits wgmma (warp-group MMA, whose A and B operands are read by the tensor cores
straight from shared memory) only when the M dimension of the dot is at least 64. In the original M = G_PAD
= 16 (the query group padded), so Triton falls back to mma.sync: every K/V tile goes shared memory ->
registers (ldmatrix) first, which costs issue slots and registers in exactly the loop that, with few programs
(44 on an H200: ~33% of copy bandwidth), is bound by issue/latency rather than by bytes in flight. Here
M = BLOCK_N tokens for QK^T (K tile = operand A, from shared memory) and M = HEAD_DIM for PV (V tile, read
transposed = operand A, from shared memory; 16-bit types allow the transposed smem layout); the small
query-side operands (q^T, p^T: N = G_PAD) are the B operands. Costs that move the other way: the softmax
statistics are now column reductions across the token rows, which wgmma spreads over the warps of the
warp group (a cross-warp reduction each iteration), and p^T has to be written to shared memory as wgmma's
B operand. Whether the trade pays is an open question: measure it against decode_attention
(scripts/kernel_check.py) before using it; the engine's ops do not call this kernel.

Compiled for sm_90 without a GPU (triton 3.9, bf16, D = 128, BLOCK_N = 128): both dots lower to wgmma (no
ldmatrix / mma.sync, the original has only those), but with async wgmma the pipeliner keeps num_stages K/V
buffers instead of num_stages - 1, so the same DecodeConfig takes one tile more of shared memory (3 stages:
200 KB vs 136 KB; 64-token tiles, 4 stages: 134 KB vs 102 KB, too much for two programs per SM). Compare at
equal shared memory too (num_stages one lower here).
"""

from __future__ import annotations

import torch

from engine.kernels._compat import (
    cdiv,
    dot_precision,
    is_interpreted,
    next_pow2,
    num_sms,
    require_triton,
    tl,
    triton,
)
from engine.kernels.decode_attention import (
    DecodeConfig,
    _decode_reduce_kernel,
    choose_num_splits,
    default_config,
)


# Values that change from batch to batch are not specialized on (as in decode_attention: no mid-serving JIT).
@triton.jit(do_not_specialize=["scale_log2", "num_seqs", "num_work", "split_len", "num_splits", "stride_bt"])
def _decode_kmajor_kernel(
    q_ptr, kc_ptr, vc_ptr, bt_ptr, ctx_ptr, out_ptr, mid_o_ptr, mid_lse_ptr,
    scale_log2, num_seqs, num_work, split_len, num_splits,
    stride_qs, stride_qh, stride_cb, stride_ch, stride_ct, stride_bt, stride_os, stride_oh,
    NUM_KV_HEADS: tl.constexpr, GROUP: tl.constexpr, G_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, WINDOW_PAGES: tl.constexpr, DIRECT: tl.constexpr,
    DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    g = tl.arange(0, G_PAD)  # query heads of the group (columns >= GROUP are padding)
    d = tl.arange(0, HEAD_DIM)
    n = tl.arange(0, BLOCK_N)
    pg = tl.arange(0, WINDOW_PAGES)
    for w in range(pid, num_work, nprog):
        kvh = w % NUM_KV_HEADS
        seq = (w // NUM_KV_HEADS) % num_seqs
        split = w // (NUM_KV_HEADS * num_seqs)
        ctx = tl.load(ctx_ptr + seq)
        start = split * split_len  # a multiple of BLOCK_N, hence of BLOCK_SIZE
        # the last split takes whatever is left, so no token is lost whatever split_len the host chose
        end = tl.where(split == num_splits - 1, ctx, tl.minimum(ctx, start + split_len))
        if (start < end) | DIRECT:  # DIRECT: also write zeros for an empty context
            heads = kvh * GROUP + g
            q = tl.load(q_ptr + seq * stride_qs + heads[:, None] * stride_qh + d[None, :],
                        mask=(g < GROUP)[:, None], other=0.0)  # [G_PAD, D]
            if DOT_F32:
                q = q.to(tl.float32)
            qt = tl.trans(q)  # [D, G_PAD], once per work item: the B operand of every s^T tile
            m_i = tl.full([G_PAD], float("-inf"), tl.float32)  # per query head = per column
            l_i = tl.zeros([G_PAD], tl.float32)
            acc_t = tl.zeros([HEAD_DIM, G_PAD], tl.float32)
            head_off = kvh * stride_ch
            for w0 in range(start, end, WINDOW_PAGES * BLOCK_SIZE):
                w_end = tl.minimum(end, w0 + WINDOW_PAGES * BLOCK_SIZE)
                page0 = w0 // BLOCK_SIZE
                pages = tl.load(bt_ptr + seq * stride_bt + page0 + pg,
                                mask=pg * BLOCK_SIZE < w_end - w0, other=0)  # [WINDOW_PAGES] block ids
                for t0 in range(w0, w_end, BLOCK_N):
                    tok = t0 + n  # [BLOCK_N]
                    valid = tok < w_end
                    blk = tl.gather(pages, tl.minimum(tok // BLOCK_SIZE - page0, WINDOW_PAGES - 1), axis=0)
                    off = blk.to(tl.int64) * stride_cb + head_off + (tok % BLOCK_SIZE) * stride_ct
                    k = tl.load(kc_ptr + off[:, None] + d[None, :], mask=valid[:, None], other=0.0)  # [N, D]
                    v = tl.load(vc_ptr + off[:, None] + d[None, :], mask=valid[:, None], other=0.0)
                    if DOT_F32:
                        k = k.to(tl.float32)
                        v = v.to(tl.float32)
                    st = tl.dot(k, qt, input_precision=PRECISION) * scale_log2  # [BLOCK_N, G_PAD], M = tokens
                    st = tl.where(valid[:, None], st, float("-inf"))
                    m_new = tl.maximum(m_i, tl.max(st, axis=0))
                    alpha = tl.exp2(m_i - m_new)
                    p_t = tl.exp2(st - m_new[None, :])
                    l_i = l_i * alpha + tl.sum(p_t, axis=0)
                    # [D, N] x [N, G_PAD]: M = HEAD_DIM, V read transposed
                    acc_t = acc_t * alpha[None, :] + tl.dot(tl.trans(v), p_t.to(v.dtype), input_precision=PRECISION)
                    m_i = m_new
            l_safe = tl.where(l_i > 0, l_i, 1.0)
            o_t = acc_t / l_safe[None, :]  # [D, G_PAD]
            gmask = (g < GROUP)[None, :]
            # stored transposed back by the addressing (element [d, g] -> head g, dim d): no tl.trans needed
            if DIRECT:
                tl.store(out_ptr + seq * stride_os + heads[None, :] * stride_oh + d[:, None],
                         o_t.to(out_ptr.dtype.element_ty), mask=gmask)
            else:
                # mid_o [S, H, num_splits, D] fp32, mid_lse [S, H, num_splits] (log2 domain)
                row = (seq * (NUM_KV_HEADS * GROUP) + heads) * num_splits + split  # [G_PAD]
                tl.store(mid_o_ptr + row[None, :] * HEAD_DIM + d[:, None], o_t, mask=gmask)
                tl.store(mid_lse_ptr + row, m_i + tl.log2(l_safe), mask=g < GROUP)


def decode_attention_kmajor(q, k_cache, v_cache, block_tables, context_lens, scale, *, out=None,
                            max_programs=None, num_splits=None, config: DecodeConfig | None = None):
    """Token-major variant of decode_attention; same arguments, splits, configs and result ([S, H, D])."""
    require_triton()
    num_seqs, num_heads, head_dim = q.shape
    _, num_kv_heads, block_size, _ = k_cache.shape
    group = num_heads // num_kv_heads
    assert num_heads % num_kv_heads == 0 and q.stride(-1) == 1
    assert k_cache.is_contiguous() and v_cache.is_contiguous() and k_cache.stride() == v_cache.stride()
    assert block_tables.dtype == torch.int32 and context_lens.dtype == torch.int32
    assert block_tables.stride(-1) == 1
    if out is None:
        out = torch.empty_like(q)
    assert out.stride(-1) == 1
    if num_seqs == 0:
        return out
    cfg = config or default_config(head_dim, block_size, q.dtype, persistent=max_programs is not None)
    block_n = max(cfg.block_n, block_size)
    window_pages = max(cfg.window_pages, block_n // block_size)
    max_context = block_tables.shape[1] * block_size
    budget = max_programs or num_sms(q.device.index if q.is_cuda else None)
    if num_splits is None:
        num_splits = choose_num_splits(num_seqs, num_kv_heads, max_context, budget)
    split_len = cdiv(cdiv(max_context, num_splits), block_n) * block_n  # whole loop iterations per split
    num_splits = cdiv(max_context, split_len)  # rounding can leave trailing splits empty for every seq
    direct = num_splits == 1
    if direct:
        mid_o = mid_lse = out  # unused
    else:
        mid_o = torch.empty(num_seqs, num_heads, num_splits, head_dim, dtype=torch.float32, device=q.device)
        mid_lse = torch.empty(num_seqs, num_heads, num_splits, dtype=torch.float32, device=q.device)
    num_work = num_splits * num_seqs * num_kv_heads
    grid = min(num_work, max_programs) if max_programs else num_work
    interpreted = is_interpreted(q)
    _decode_kmajor_kernel[(grid,)](
        q, k_cache, v_cache, block_tables, context_lens, out, mid_o, mid_lse,
        scale * 1.4426950408889634, num_seqs, num_work, split_len, num_splits,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        NUM_KV_HEADS=num_kv_heads, GROUP=group, G_PAD=max(16, next_pow2(group)), HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size, BLOCK_N=block_n, WINDOW_PAGES=next_pow2(window_pages), DIRECT=direct,
        DOT_F32=interpreted or q.dtype == torch.float32, PRECISION=dot_precision(q.dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if not direct:  # the second pass is decode_attention's reduce kernel, unchanged
        num_items = num_seqs * num_heads
        rgrid = min(num_items, max_programs) if max_programs else num_items
        _decode_reduce_kernel[(rgrid,)](
            mid_o, mid_lse, context_lens, out, num_items, num_heads, num_splits, split_len,
            out.stride(0), out.stride(1), HEAD_DIM=head_dim, SPLITS_PAD=next_pow2(num_splits), num_warps=4,
        )
    return out
