"""Paged decode attention (one query token per sequence), GQA, split-KV, optional persistent grid.

Work item = (split, seq, kv_head). One program handles the whole query group of its kv head, padded to
G_PAD >= 16 rows so that QK^T and PV run as tl.dot on tensor cores, and reads each K/V byte once. It walks
its token range BLOCK_N tokens (BLOCK_N / block_size pages) per iteration.

Paging without stalling the pipeline: a page id loaded inside the loop makes every K/V address depend on a
load, and Triton's pipeliner then keeps a single K/V buffer (one tile in flight per program). So the page
ids of a window of WINDOW_PAGES pages are loaded once into registers and each iteration picks its pages
with tl.gather: the K/V addresses then depend only on the loop counter, and num_stages - 1 tiles stay in
flight (cp.async into shared memory).

Split-KV (flash-decoding): every sequence's context is cut into chunks of `split_len` tokens (the same
length for all sequences, so all work items cost about the same and a persistent grid stays balanced);
split i of a sequence shorter than i * split_len does nothing. With more than one split, each item writes a
normalized partial output and its log2-sum-exp, and a second small kernel merges them.

max_programs: the grid is min(work items, max_programs) programs, each looping over items pid, pid + P,
... so the engine can confine decode attention to an SM budget and run GEMMs beside it on another stream.

Sliding window (WINDOW > 0, a constexpr: one compiled variant per window size, static under CUDA graphs):
the query at position ctx - 1 sees keys [ctx - WINDOW, ctx). The splits then cover [base, ctx), base =
that start rounded down to BLOCK_N, so no work item walks keys nobody sees; only split 0's first tile masks
the keys below the window (head tile). Blocks past the window stay in the cache (the block manager frees a
sequence's blocks only when it finishes): the kernel skips them, it never needs them to be absent.

Whole tiles run without masks; only a page window's last, partial tile and a sliding window's first one
are masked (_attend_tile, MASKED): with one program per SM the loop is issue-bound (one warp per scheduler,
results/reference/h200/ncu-decode-44.txt), so per-tile masks cost a visible share of its rate.

On a fraction of the SMs this kernel stays well below what a plain streaming read of the same bytes reaches
there; what is left is the online softmax and the MMAs' latency per tile, so closing the gap needs more
warps per SM (a warp-specialized kernel), not more bytes in flight. The figures (bandwidth per SM budget,
the streaming-read probe, the ablation) are in README, "Measured", and results/reference/h200/
(kernel_check.json, stream-probe.json, decode-ablation.json); scripts/kernel_check.py reruns the first.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def decode_attention_ref(q, k_cache, v_cache, block_tables, context_lens, scale, *, out=None, window=0,
                         k_scale=None, v_scale=None, **_ignored):
    """Torch reference and CPU path: gathers every sequence's pages padded to the longest, fp32 math.

    q [S, H, D]; caches [NB, Hkv, BS, D]; block_tables int32 [S, MB]; context_lens int32 [S] -> [S, H, D].
    window > 0: sliding window, keys [ctx - window, ctx) only (HF: k > q_pos - window).
    An fp8 cache holds K / k_scale per kv head (k_scale, v_scale fp32 [Hkv]; None = 1).
    """
    num_seqs, num_heads, head_dim = q.shape
    _, num_kv_heads, block_size, _ = k_cache.shape
    group = num_heads // num_kv_heads
    max_len = int(context_lens.max()) if num_seqs else 0
    nblk = cdiv(max(max_len, 1), block_size)
    ids = block_tables[:, :nblk].long()  # [S, nb]

    def gather(cache, kv_scale):  # -> [S, Hkv, nb * BS, D] fp32
        g = cache[ids].float()  # [S, nb, Hkv, BS, D]
        if kv_scale is not None:
            g = g * kv_scale.float().view(1, 1, num_kv_heads, 1, 1)
        return g.permute(0, 2, 1, 3, 4).reshape(num_seqs, num_kv_heads, nblk * block_size, head_dim)

    pos = torch.arange(nblk * block_size, device=q.device)
    valid = pos[None, :] < context_lens[:, None].to(pos.dtype)  # [S, N]
    if window > 0:
        valid &= pos[None, :] >= context_lens[:, None].to(pos.dtype) - window
    # slots past a context hold anything (NaN in a poisoned cache): zero them, since 0 * NaN is NaN
    invalid = ~valid[:, None, :, None]
    k, v = gather(k_cache, k_scale).masked_fill_(invalid, 0.0), gather(v_cache, v_scale).masked_fill_(invalid, 0.0)
    qg = q.float().view(num_seqs, num_kv_heads, group, head_dim)
    scores = torch.einsum("skgd,sknd->skgn", qg, k) * scale  # [S, Hkv, G, N]
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num_(0.0)  # a context of 0 gives zeros, like the kernel
    res = torch.einsum("skgn,sknd->skgd", probs, v).reshape(num_seqs, num_heads, head_dim).to(q.dtype)
    if out is None:
        return res
    out.copy_(res)
    return out


@dataclass(frozen=True)
class DecodeConfig:
    block_n: int = 64  # tokens per loop iteration (block_n / block_size pages)
    num_warps: int = 4
    num_stages: int = 3  # num_stages - 1 K/V tiles in flight
    window_pages: int = 128  # page ids held in registers at a time (the pipeline drains between windows)


def default_config(head_dim: int, block_size: int, dtype: torch.dtype, persistent: bool) -> DecodeConfig:
    """Tile config, from a sweep on an H200 at Llama-3-8B shapes (scripts/kernel_check.py).

    One program per SM (persistent): 128-token tiles with two in flight (~139 KB of shared memory) went
    fastest. Full grid: 64-token tiles, 4 stages (~104 KB) leave room for two programs per SM, whose
    interleaving hides latency better than deeper tiles in one program.
    """
    if dtype == torch.float32:  # not a GPU target; keep shared memory small
        return DecodeConfig(block_n=max(32, block_size), num_warps=4, num_stages=2)
    if persistent or head_dim <= 64:
        return DecodeConfig(block_n=max(128, block_size), num_warps=4, num_stages=3)
    return DecodeConfig(block_n=max(64, block_size), num_warps=4, num_stages=4)


def choose_num_splits(num_seqs: int, num_kv_heads: int, max_context: int, num_programs: int,
                      min_split_tokens: int = 256, max_splits: int = 64) -> int:
    """Splits per sequence: enough work items (>= 4 per program) for balance, none under min_split_tokens.

    max_context is an upper bound known on the host without a sync (block-table width x block size).
    """
    want = cdiv(4 * num_programs, max(1, num_seqs * num_kv_heads))
    cap = max(1, max_context // min_split_tokens)
    return max(1, min(want, cap, max_splits))


@triton.jit
def _attend_tile(q, acc, m_i, l_i, pages, page0, t0, w_start, w_end, kc_ptr, vc_ptr, head_off, stride_cb,
                 stride_ct, scale_log2, n, d, BLOCK_SIZE: tl.constexpr, WINDOW_PAGES: tl.constexpr,
                 MASKED: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    """One BLOCK_N-token tile of the online softmax over keys [w_start, w_end). MASKED only for a page window's
    last, partial tile and a sliding window's first one: masks on every tile slow the issue-bound loop
    (results/reference/h200/decode-ablation.json). A masked tile has at least one visible key."""
    tok = t0 + n  # [BLOCK_N]
    idx = tok // BLOCK_SIZE - page0
    if MASKED:
        idx = tl.minimum(idx, WINDOW_PAGES - 1)
    blk = tl.gather(pages, idx, axis=0)
    off = blk.to(tl.int64) * stride_cb + head_off + (tok % BLOCK_SIZE) * stride_ct
    if MASKED:
        valid = (tok < w_end) & (tok >= w_start)
        k = tl.load(kc_ptr + off[:, None] + d[None, :], mask=valid[:, None], other=0.0)  # [N, D]
        v = tl.load(vc_ptr + off[:, None] + d[None, :], mask=valid[:, None], other=0.0)
    else:
        k = tl.load(kc_ptr + off[:, None] + d[None, :])
        v = tl.load(vc_ptr + off[:, None] + d[None, :])
    if DOT_F32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    else:  # an fp8 cache: dequantize to q's dtype, fp16 then (the scales are applied to scores and output)
        k = k.to(q.dtype)
        v = v.to(q.dtype)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2  # [G_PAD, BLOCK_N]
    if MASKED:
        s = tl.where(valid[None, :], s, float("-inf"))
    return softmax_step(s, v, acc, m_i, l_i, PRECISION)


@triton.jit
def softmax_step(s, v, acc, m_i, l_i, PRECISION: tl.constexpr):
    """The online-softmax update of one tile, shared by the pointer and the TMA decode kernels: scores `s`
    [M, N] (log2 domain, -inf where masked), values `v` [N, D], running `acc` [M, D], max `m_i` and sum `l_i`
    [M] -> the new (acc, m, l)."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, m_new, l_i


# Values that change from batch to batch are not specialized on (divisibility by 16, == 1): each new
# combination would be a fresh JIT compile in the middle of serving, seconds of stalled GPU.
@triton.jit(do_not_specialize=["scale_log2", "num_seqs", "num_work", "split_len", "num_splits", "stride_bt"])
def _decode_kernel(
    q_ptr, kc_ptr, vc_ptr, bt_ptr, ctx_ptr, out_ptr, mid_o_ptr, mid_lse_ptr, ks_ptr, vs_ptr,
    scale_log2, num_seqs, num_work, split_len, num_splits,
    stride_qs, stride_qh, stride_cb, stride_ch, stride_ct, stride_bt, stride_os, stride_oh,
    NUM_KV_HEADS: tl.constexpr, GROUP: tl.constexpr, G_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, WINDOW_PAGES: tl.constexpr, DIRECT: tl.constexpr,
    DOT_F32: tl.constexpr, PRECISION: tl.constexpr, HAS_SCALES: tl.constexpr, WINDOW: tl.constexpr = 0,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    g = tl.arange(0, G_PAD)  # query heads of the group (rows >= GROUP are padding)
    d = tl.arange(0, HEAD_DIM)
    n = tl.arange(0, BLOCK_N)
    pg = tl.arange(0, WINDOW_PAGES)
    for w in range(pid, num_work, nprog):
        kvh = w % NUM_KV_HEADS
        seq = (w // NUM_KV_HEADS) % num_seqs
        split = w // (NUM_KV_HEADS * num_seqs)
        ctx = tl.load(ctx_ptr + seq)
        lo = ctx * 0  # first visible key
        if WINDOW > 0:
            lo = tl.maximum(ctx - WINDOW, 0)
        base = lo // BLOCK_N * BLOCK_N
        start = base + split * split_len  # a multiple of BLOCK_N, hence of BLOCK_SIZE
        # the last split takes whatever is left, so no token is lost whatever split_len the host chose
        end = tl.where(split == num_splits - 1, ctx, tl.minimum(ctx, start + split_len))
        if (start < end) | DIRECT:  # DIRECT: also write zeros for an empty context
            heads = kvh * GROUP + g
            q = tl.load(q_ptr + seq * stride_qs + heads[:, None] * stride_qh + d[None, :],
                        mask=(g < GROUP)[:, None], other=0.0)  # [G_PAD, D]
            if DOT_F32:
                q = q.to(tl.float32)
            elif HAS_SCALES:  # an fp8 cache: run both dots in fp16, since e4m3 -> f16 is one hardware conversion
                q = q.to(tl.float16)  # per pair on sm >= 89 and e4m3 -> bf16 is not (_attend_tile casts to q's)
            m_i = tl.full([G_PAD], float("-inf"), tl.float32)
            l_i = tl.zeros([G_PAD], tl.float32)
            acc = tl.zeros([G_PAD, HEAD_DIM], tl.float32)
            head_off = kvh * stride_ch
            qk_scale = scale_log2
            if HAS_SCALES:  # fp8 cache: K = K8 * k_scale[kvh], folded into the score scale
                qk_scale = qk_scale * tl.load(ks_ptr + kvh)
            for w0 in range(start, end, WINDOW_PAGES * BLOCK_SIZE):
                w_end = tl.minimum(end, w0 + WINDOW_PAGES * BLOCK_SIZE)
                page0 = w0 // BLOCK_SIZE
                pages = tl.load(bt_ptr + seq * stride_bt + page0 + pg,
                                mask=pg * BLOCK_SIZE < w_end - w0, other=0)  # [WINDOW_PAGES] block ids
                # whole tiles without masks (the loop the pipeliner streams), then at most one masked tail
                t_first = w0
                if WINDOW > 0:
                    if w0 < lo:  # the sliding window starts inside this first tile: mask the keys below it
                        acc, m_i, l_i = _attend_tile(
                            q, acc, m_i, l_i, pages, page0, w0, lo, w_end, kc_ptr, vc_ptr, head_off, stride_cb,
                            stride_ct, qk_scale, n, d, BLOCK_SIZE, WINDOW_PAGES, True, DOT_F32, PRECISION)
                        t_first = w0 + BLOCK_N
                full_end = t_first + tl.maximum(w_end - t_first, 0) // BLOCK_N * BLOCK_N
                for t0 in range(t_first, full_end, BLOCK_N):
                    acc, m_i, l_i = _attend_tile(
                        q, acc, m_i, l_i, pages, page0, t0, 0, w_end, kc_ptr, vc_ptr, head_off, stride_cb,
                        stride_ct, qk_scale, n, d, BLOCK_SIZE, WINDOW_PAGES, False, DOT_F32, PRECISION)
                if full_end < w_end:
                    acc, m_i, l_i = _attend_tile(
                        q, acc, m_i, l_i, pages, page0, full_end, 0, w_end, kc_ptr, vc_ptr, head_off, stride_cb,
                        stride_ct, qk_scale, n, d, BLOCK_SIZE, WINDOW_PAGES, True, DOT_F32, PRECISION)
            l_safe = tl.where(l_i > 0, l_i, 1.0)
            o = acc / l_safe[:, None]
            if HAS_SCALES:
                o = o * tl.load(vs_ptr + kvh)
            gmask = (g < GROUP)[:, None]
            if DIRECT:
                tl.store(out_ptr + seq * stride_os + heads[:, None] * stride_oh + d[None, :],
                         o.to(out_ptr.dtype.element_ty), mask=gmask)
            else:
                # mid_o [S, H, num_splits, D] fp32, mid_lse [S, H, num_splits] (log2 domain)
                row = (seq * (NUM_KV_HEADS * GROUP) + heads) * num_splits + split  # [G_PAD]
                tl.store(mid_o_ptr + row[:, None] * HEAD_DIM + d[None, :], o, mask=gmask)
                tl.store(mid_lse_ptr + row, m_i + tl.log2(l_safe), mask=g < GROUP)


@triton.jit(do_not_specialize=["num_items", "num_splits", "split_len"])
def _decode_reduce_kernel(
    mid_o_ptr, mid_lse_ptr, ctx_ptr, out_ptr, num_items, num_heads, num_splits, split_len,
    stride_os, stride_oh, HEAD_DIM: tl.constexpr, SPLITS_PAD: tl.constexpr, BLOCK_N: tl.constexpr = 1,
    WINDOW: tl.constexpr = 0,
):
    # one item per (seq, head): merge its active splits' partial outputs by their log-sum-exp weights
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    sp = tl.arange(0, SPLITS_PAD)
    d = tl.arange(0, HEAD_DIM)
    for w in range(pid, num_items, nprog):
        seq = w // num_heads
        head = w % num_heads
        ctx = tl.load(ctx_ptr + seq)
        base = ctx * 0  # as in _decode_kernel
        if WINDOW > 0:
            base = tl.maximum(ctx - WINDOW, 0) // BLOCK_N * BLOCK_N
        span = ctx - base
        active = sp < tl.minimum((span + split_len - 1) // split_len, num_splits)  # splits that saw a token
        row = w * num_splits + sp
        lse = tl.load(mid_lse_ptr + row, mask=active, other=float("-inf"))  # [SPLITS_PAD]
        m = tl.maximum(tl.max(lse, axis=0), -1e30)  # finite even when ctx == 0 (all splits inactive)
        wgt = tl.where(active, tl.exp2(lse - m), 0.0)
        o = tl.load(mid_o_ptr + row[:, None] * HEAD_DIM + d[None, :], mask=active[:, None], other=0.0)
        total = tl.sum(wgt, axis=0)
        res = tl.sum(o * wgt[:, None], axis=0) / tl.where(total > 0, total, 1.0)  # [D]
        tl.store(out_ptr + seq * stride_os + head * stride_oh + d, res.to(out_ptr.dtype.element_ty))


def decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale, *, out=None,
                     max_programs=None, num_splits=None, config: DecodeConfig | None = None, window: int = 0,
                     k_scale=None, v_scale=None):
    """Triton paged decode attention; arguments as decode_attention_ref. -> [S, H, D] in q's dtype.

    num_splits=None picks splits from the block-table width (a host-side bound on the context, no sync),
    the number of sequences and the program budget; config=None picks tile sizes from head_dim/dtype.
    """
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
    if window > 0:  # keys a work item may walk: [base, ctx), fewer than window + BLOCK_N
        max_context = min(max_context, cdiv(window, block_n) * block_n + block_n)
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
    _decode_kernel[(grid,)](
        q, k_cache, v_cache, block_tables, context_lens, out, mid_o, mid_lse,
        out if k_scale is None else k_scale, out if v_scale is None else v_scale,  # fp8: fp32 [Hkv] each
        scale * 1.4426950408889634, num_seqs, num_work, split_len, num_splits,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        NUM_KV_HEADS=num_kv_heads, GROUP=group, G_PAD=max(16, next_pow2(group)), HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size, BLOCK_N=block_n, WINDOW_PAGES=next_pow2(window_pages), DIRECT=direct,
        DOT_F32=interpreted or q.dtype == torch.float32, PRECISION=dot_precision(q.dtype), WINDOW=window,
        HAS_SCALES=k_scale is not None, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if not direct:
        num_items = num_seqs * num_heads
        rgrid = min(num_items, max_programs) if max_programs else num_items
        _decode_reduce_kernel[(rgrid,)](
            mid_o, mid_lse, context_lens, out, num_items, num_heads, num_splits, split_len,
            out.stride(0), out.stride(1), HEAD_DIM=head_dim, SPLITS_PAD=next_pow2(num_splits), BLOCK_N=block_n,
            WINDOW=window, num_warps=4,
        )
    return out
