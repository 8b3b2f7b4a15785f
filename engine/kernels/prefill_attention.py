"""Chunked-prefill attention over the paged KV cache, causal, GQA.

q [T, H, D] packs the query chunks of several sequences (cu_seqlens_q int32 [S+1]); seq_lens[s] counts the
whole context of sequence s including this chunk, whose K/V are already in the cache, so query i of s sits
at position seq_lens[s] - q_len_s + i and sees keys 0..that position.

Kernel: grid (query tiles of all sequences, kv heads); a program finds its sequence from cu_seqlens_q, so
the grid depends only on the token and sequence counts (static shapes for CUDA graphs, and no programs
idle for want of a longer sequence). A program takes BLOCK_Q query tokens x all G_PAD query heads of one
kv head as a [BLOCK_Q * G_PAD, D] tile (row r = token r // G_PAD, head r % G_PAD), so each K/V page is read
once per kv head and the tile is tall enough for tensor cores. Keys before the tile's first query position
need no causal mask; the loop over them is separate from the short masked tail.

Sliding window (WINDOW > 0, a constexpr): query position p sees keys p - WINDOW < k <= p. The keys a tile
needs start at its first query's window; a band of tiles where rows' windows begin is masked, the keys
every row sees run unmasked, and the causal tail masks both. Blocks past the window stay in the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.kernels._compat import cdiv, dot_precision, is_interpreted, next_pow2, require_triton, tl, triton


def prefill_attention_ref(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, scale, *,
                          max_seqlen_q=None, out=None, window=0, k_scale=None, v_scale=None):
    """Torch reference and CPU path: one SDPA call per sequence (a loop over sequences, not tokens).

    window > 0: sliding window, query position p sees keys p - window < k <= p (HF's rule).
    An fp8 cache holds K / k_scale per kv head (k_scale, v_scale fp32 [Hkv]; None = 1)."""
    num_heads, head_dim = q.shape[1], q.shape[2]
    _, num_kv_heads, block_size, _ = k_cache.shape
    group = num_heads // num_kv_heads
    if out is None:
        out = torch.empty_like(q)
    cu = cu_seqlens_q.tolist()
    lens = seq_lens.tolist()
    for s, seq_len in enumerate(lens):
        q_lo, q_hi = cu[s], cu[s + 1]
        q_len = q_hi - q_lo
        if q_len == 0:
            continue
        nblk = cdiv(seq_len, block_size)
        ids = block_tables[s, :nblk].long()
        # [nb, Hkv, BS, D] -> [Hkv, L, D]
        k = k_cache[ids].permute(1, 0, 2, 3).reshape(num_kv_heads, -1, head_dim)[:, :seq_len].float()
        v = v_cache[ids].permute(1, 0, 2, 3).reshape(num_kv_heads, -1, head_dim)[:, :seq_len].float()
        if k_scale is not None:
            k, v = k * k_scale.float().view(-1, 1, 1), v * v_scale.float().view(-1, 1, 1)
        # queries of one kv head stacked as [Hkv, G * q_len, D] (rows ordered g, i) so K/V need no repeat
        qs = q[q_lo:q_hi].float().view(q_len, num_kv_heads, group, head_dim).permute(1, 2, 0, 3)
        qs = qs.reshape(num_kv_heads, group * q_len, head_dim)
        q_pos = torch.arange(seq_len - q_len, seq_len, device=q.device)
        mask = torch.arange(seq_len, device=q.device)[None, :] <= q_pos[:, None]  # [q_len, L]
        if window > 0:
            mask &= torch.arange(seq_len, device=q.device)[None, :] > q_pos[:, None] - window
        o = F.scaled_dot_product_attention(qs, k, v, attn_mask=mask.repeat(group, 1), scale=scale)
        o = o.view(num_kv_heads, group, q_len, head_dim).permute(2, 0, 1, 3)
        o = o.reshape(q_len, num_heads, head_dim)
        out[q_lo:q_hi] = o.to(out.dtype)
    return out


@triton.jit
def _attend(q, m_i, l_i, acc, kc_ptr, vc_ptr, bt_row_ptr, head_off, q_pos, lo, hi, scale_log2,
            stride_cb, stride_ct, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
            WINDOW_PAGES: tl.constexpr, CAUSAL: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
            WINDOW: tl.constexpr = 0):
    # online softmax over keys [lo, hi) (lo a multiple of BLOCK_N); q [M, D] at positions q_pos [M];
    # WINDOW > 0 also masks keys at or below q_pos - WINDOW
    n = tl.arange(0, BLOCK_N)
    d = tl.arange(0, HEAD_DIM)
    pg = tl.arange(0, WINDOW_PAGES)
    for w0 in range(lo, hi, WINDOW_PAGES * BLOCK_SIZE):
        # page ids of the window in registers, picked with tl.gather: K/V addresses then do not depend on a
        # load inside the loop, so the pipeliner keeps num_stages - 1 tiles in flight (see decode_attention)
        w_end = tl.minimum(hi, w0 + WINDOW_PAGES * BLOCK_SIZE)
        page0 = w0 // BLOCK_SIZE
        pages = tl.load(bt_row_ptr + page0 + pg, mask=pg * BLOCK_SIZE < w_end - w0, other=0)
        for t0 in range(w0, w_end, BLOCK_N):
            tok = t0 + n
            valid = tok < w_end
            blk = tl.gather(pages, tl.minimum(tok // BLOCK_SIZE - page0, WINDOW_PAGES - 1), axis=0)
            off = blk.to(tl.int64) * stride_cb + head_off + (tok % BLOCK_SIZE) * stride_ct  # [BLOCK_N]
            k = tl.load(kc_ptr + off[:, None] + d[None, :], mask=valid[:, None], other=0.0)
            v = tl.load(vc_ptr + off[:, None] + d[None, :], mask=valid[:, None], other=0.0)
            if DOT_F32:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            else:  # an fp8 cache: dequantize to q's dtype (scales folded into scale_log2 and the output)
                k = k.to(q.dtype)
                v = v.to(q.dtype)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2  # [M, BLOCK_N]
            visible = valid[None, :]
            if CAUSAL:
                visible = visible & (tok[None, :] <= q_pos[:, None])
            if WINDOW > 0:
                visible = visible & (tok[None, :] > q_pos[:, None] - WINDOW)
            s = tl.where(visible, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing visible yet stays at 0
            alpha = tl.exp2(m_i - m_safe)
            p = tl.exp2(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
    return m_i, l_i, acc


@triton.jit(do_not_specialize=["scale_log2", "stride_bt", "num_seqs"])  # per-batch values: no recompiles mid-run
def _prefill_kernel(
    q_ptr, kc_ptr, vc_ptr, bt_ptr, seq_lens_ptr, cu_q_ptr, out_ptr, ks_ptr, vs_ptr, scale_log2, num_seqs,
    stride_qt, stride_qh, stride_cb, stride_ch, stride_ct, stride_bt, stride_ot, stride_oh,
    GROUP: tl.constexpr, G_PAD: tl.constexpr, BLOCK_Q: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, WINDOW_PAGES: tl.constexpr, DOT_F32: tl.constexpr,
    PRECISION: tl.constexpr, S_CHUNK: tl.constexpr, HAS_SCALES: tl.constexpr, WINDOW: tl.constexpr = 0,
):
    # program -> (sequence, query tile): tiles are numbered sequence by sequence, so the grid is the total
    # tile count (bounded on the host by cdiv(tokens, BLOCK_Q) + seqs) whatever the lengths; extra programs
    # and zero-length sequences (CUDA-graph padding) do nothing
    pid = tl.program_id(0)
    kvh = tl.program_id(1)
    # the sequences are read S_CHUNK at a time (one pass for a graph layout's pieces), so one compiled
    # variant serves every sequence count: a new count mid-run never stalls a step on a compile
    s = tl.arange(0, S_CHUNK)
    seq = num_seqs  # none: this program has no tile
    tile = pid * 0
    before = pid * 0  # tiles of the sequences before the chunk
    for c in range(0, num_seqs, S_CHUNK):
        lo_s = tl.load(cu_q_ptr + c + s, mask=c + s < num_seqs, other=0)
        hi_s = tl.load(cu_q_ptr + c + s + 1, mask=c + s < num_seqs, other=0)
        tiles_s = (hi_s - lo_s + BLOCK_Q - 1) // BLOCK_Q
        after = before + tl.sum(tiles_s)
        if (pid >= before) & (pid < after):
            k = tl.sum((before + tl.cumsum(tiles_s, axis=0) <= pid).to(tl.int32))  # first whose tiles pass pid
            seq = c + k
            tile = pid - before - tl.sum(tl.where(s < k, tiles_s, 0))
        before = after
    if seq < num_seqs:
        q_lo = tl.load(cu_q_ptr + seq)
        q_len = tl.load(cu_q_ptr + seq + 1) - q_lo
        seq_len = tl.load(seq_lens_ptr + seq)
        ctx_start = seq_len - q_len  # position of the chunk's first query
        r = tl.arange(0, BLOCK_Q * G_PAD)
        tok_i = tile * BLOCK_Q + r // G_PAD  # query index inside the chunk
        g = r % G_PAD
        head = kvh * GROUP + g
        row_ok = (tok_i < q_len) & (g < GROUP)
        d = tl.arange(0, HEAD_DIM)
        q_off = (q_lo + tok_i) * stride_qt + head * stride_qh  # [M]
        q = tl.load(q_ptr + q_off[:, None] + d[None, :], mask=row_ok[:, None], other=0.0)  # [M, D]
        if DOT_F32:
            q = q.to(tl.float32)
        q_pos = ctx_start + tok_i
        m_i = tl.full([BLOCK_Q * G_PAD], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_Q * G_PAD], tl.float32)
        acc = tl.zeros([BLOCK_Q * G_PAD, HEAD_DIM], tl.float32)
        bt_row = bt_ptr + seq * stride_bt
        head_off = kvh * stride_ch
        if HAS_SCALES:  # fp8 cache: K = K8 * k_scale[kvh], folded into the score scale
            scale_log2 = scale_log2 * tl.load(ks_ptr + kvh)
        # keys below the tile's first query position are visible to every row: no causal mask there
        first_pos = ctx_start + tile * BLOCK_Q
        full_hi = (first_pos // BLOCK_N) * BLOCK_N
        kv_hi = tl.minimum(seq_len, first_pos + BLOCK_Q)  # one past the tile's last query position
        band_lo = full_hi * 0  # keys [band_lo, band_hi): where some rows' sliding windows begin (masked)
        band_hi = full_hi * 0
        if WINDOW > 0:
            band_lo = tl.minimum(tl.maximum(first_pos - WINDOW + 1, 0) // BLOCK_N * BLOCK_N, full_hi)
            band_hi = tl.minimum(tl.maximum((kv_hi - WINDOW + BLOCK_N - 1) // BLOCK_N * BLOCK_N, band_lo), full_hi)
            m_i, l_i, acc = _attend(q, m_i, l_i, acc, kc_ptr, vc_ptr, bt_row, head_off, q_pos, band_lo, band_hi,
                                    scale_log2, stride_cb, stride_ct, BLOCK_SIZE, BLOCK_N, HEAD_DIM,
                                    WINDOW_PAGES, False, DOT_F32, PRECISION, WINDOW)
        m_i, l_i, acc = _attend(q, m_i, l_i, acc, kc_ptr, vc_ptr, bt_row, head_off, q_pos, band_hi, full_hi,
                                scale_log2, stride_cb, stride_ct, BLOCK_SIZE, BLOCK_N, HEAD_DIM,
                                WINDOW_PAGES, False, DOT_F32, PRECISION)
        m_i, l_i, acc = _attend(q, m_i, l_i, acc, kc_ptr, vc_ptr, bt_row, head_off, q_pos, full_hi, kv_hi,
                                scale_log2, stride_cb, stride_ct, BLOCK_SIZE, BLOCK_N, HEAD_DIM,
                                WINDOW_PAGES, True, DOT_F32, PRECISION, WINDOW)
        o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        if HAS_SCALES:
            o = o * tl.load(vs_ptr + kvh)
        o_off = (q_lo + tok_i) * stride_ot + head * stride_oh
        tl.store(out_ptr + o_off[:, None] + d[None, :], o.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


@dataclass(frozen=True)
class PrefillConfig:
    """Defaults: the best of a small sweep on an H200, Llama-3-8B shapes, 4 x 2048-token prompts
    (scripts/kernel_check.py; its rate against flash SDPA on the same un-paged problem is in
    results/reference/h200/kernel_check*.json)."""

    rows: int = 64  # (query token, query head) rows per program: BLOCK_Q = rows // G_PAD tokens
    block_n: int = 64  # keys per loop iteration
    num_warps: int = 4
    num_stages: int = 3
    window_pages: int = 128  # page ids held in registers at a time


def default_config(head_dim: int, dtype: torch.dtype, interpreted: bool) -> PrefillConfig:
    if interpreted:  # small tiles keep the interpreter fast and still give several tiles per sequence
        return PrefillConfig(rows=32, block_n=16, num_warps=4, num_stages=1, window_pages=2)
    if dtype == torch.float32 or head_dim > 128:
        return PrefillConfig(rows=64, block_n=32, num_warps=4, num_stages=2)
    return PrefillConfig()


def prefill_attention(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, scale, *,
                      max_seqlen_q=None, out=None, config: PrefillConfig | None = None, window: int = 0,
                      k_scale=None, v_scale=None):
    """Triton chunked-prefill attention; arguments as prefill_attention_ref. -> [T, H, D] in q's dtype.

    q may hold rows past cu_seqlens_q[-1] (padding of a CUDA-graph bucket): they are not written.
    max_seqlen_q is the varlen convention's argument; this grid needs only the token and sequence counts."""
    require_triton()
    num_tokens, num_heads, head_dim = q.shape
    _, num_kv_heads, block_size, _ = k_cache.shape
    group = num_heads // num_kv_heads
    num_seqs = seq_lens.shape[0]
    assert num_heads % num_kv_heads == 0 and q.stride(-1) == 1 and block_tables.stride(-1) == 1
    assert k_cache.is_contiguous() and v_cache.is_contiguous() and k_cache.stride() == v_cache.stride()
    assert block_tables.dtype == seq_lens.dtype == cu_seqlens_q.dtype == torch.int32
    if out is None:
        out = torch.empty_like(q)
    if num_tokens == 0 or num_seqs == 0:
        return out
    interpreted = is_interpreted(q)
    cfg = config or default_config(head_dim, q.dtype, interpreted)
    g_pad = next_pow2(group)
    rows = max(16, cfg.rows, g_pad)  # tl.dot needs >= 16 rows
    block_q = rows // g_pad
    block_n = max(cfg.block_n, block_size)  # whole pages per iteration keeps tok // BLOCK_SIZE cheap
    grid = (cdiv(num_tokens, block_q) + num_seqs, num_kv_heads)  # >= the tiles of any split of the tokens
    _prefill_kernel[grid](
        q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, out,
        out if k_scale is None else k_scale, out if v_scale is None else v_scale,  # fp8: fp32 [Hkv] each
        scale * 1.4426950408889634, num_seqs,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        GROUP=group, G_PAD=g_pad, BLOCK_Q=block_q, HEAD_DIM=head_dim, BLOCK_SIZE=block_size, BLOCK_N=block_n,
        WINDOW_PAGES=next_pow2(max(cfg.window_pages, block_n // block_size)),
        DOT_F32=interpreted or q.dtype == torch.float32, PRECISION=dot_precision(q.dtype),
        S_CHUNK=16,
        WINDOW=window, HAS_SCALES=k_scale is not None,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out
