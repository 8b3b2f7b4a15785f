"""Paged decode attention with TMA tensor-descriptor loads (Hopper and later, sm >= 90).

Arguments and result as decode_attention.decode_attention_ref; split-KV and max_programs as there.

Why another kernel: the pointer-gather kernel (decode_attention.py) keeps few bytes in flight per SM, so on
a third of the SMs it is bound by its own loop. A TMA load moves one large contiguous box per instruction,
asynchronously, and `tl.range(..., num_stages=N)` keeps N - 1 of them in flight.

Tile = one page of HEADS_PER_TILE consecutive kv heads. The cache [NB, Hkv, BS, D] is viewed as rows
[NB * Hkv * BS, D]; the kv heads h0 .. h0 + HPT - 1 of page b are the HPT * BS contiguous rows starting at
(b * Hkv + h0) * BS, one TMA box (Llama-3-8B, HPT = 8: 128 rows x 128 x bf16 = 32 KB for K, as much for V).
The query tile is those heads' HPT * GROUP query rows (contiguous in q). S = Q K^T is [HPT * GROUP, HPT * BS]
and only its block diagonal (query head with its own kv head) counts: the rest is masked to -inf, so P is
zero there and P V sums each query row over its own kv head only. Work item = (split, seq, head tile).

Page ids: a box address that depends on a load inside the loop makes Triton's pipeliner keep a single
buffer (seen in the sm90 TTGIR: 1 x box, whatever num_stages). So the ids of a window of WINDOW_PAGES pages
are loaded once into registers and each iteration picks its own with a masked sum; then num_stages - 1
boxes are in flight. Only the context's last, partial page is masked (unwritten slots may hold anything, NaN
included, so V rows past the context are zeroed before P V).

FP8 cache (e4m3): K and V are converted to q's dtype after the load; per-(kv head) scales k_scale, v_scale
fp32 [Hkv] multiply the scores (per column) and the output (per row), not every element.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.kernels._compat import HAS_TRITON, cdiv, dot_precision, is_interpreted, next_pow2, num_sms, tl, triton
from engine.kernels.decode_attention import _decode_reduce_kernel, choose_num_splits, softmax_step

if HAS_TRITON:
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor
    except ImportError:  # pragma: no cover - triton without host tensor descriptors
        TensorDescriptor = None
else:  # pragma: no cover
    TensorDescriptor = None


@dataclass(frozen=True)
class TmaDecodeConfig:
    heads_per_tile: int = 8  # kv heads per TMA box (capped at Hkv; box rows = heads_per_tile * block_size)
    num_warps: int = 8
    num_stages: int = 3  # TMA boxes in flight = num_stages - 1 (each K + V: 2 x rows x D x itemsize bytes)
    warp_specialize: bool = False  # tl.range(warp_specialize=True): producer warps issue the loads
    window_pages: int = 32  # page ids held in registers at a time (the pipeline drains between windows)
    # query rows padded to at least this: 64 lets Hopper run the dots as wgmma straight from the TMA'd
    # shared memory; below 64 Triton uses mma.sync and first moves K/V into registers
    min_rows: int = 16


def default_config(num_kv_heads: int, block_size: int, dtype: torch.dtype, kv_itemsize: int) -> TmaDecodeConfig:
    """Boxes of <= 128 rows; query rows padded to 64 for wgmma. With that padding Triton keeps num_stages
    boxes (sm90 TTGIR): 3 x (K + V) x 32 KB = 192 KB of bf16 in flight, 4 x 16 KB x 2 of fp8 (H100/H200
    shared memory: 227 KB per block). To be set from the sweep in scripts/decode_tma_check.py."""
    if dtype == torch.float32:  # interpreter / tests: small shared memory
        return TmaDecodeConfig(heads_per_tile=min(num_kv_heads, 2), num_warps=4, num_stages=2)
    return TmaDecodeConfig(heads_per_tile=max(1, min(num_kv_heads, 128 // block_size)), num_warps=4,
                           num_stages=3 if kv_itemsize > 1 else 4, min_rows=64)


def is_supported(q: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """TMA needs sm >= 90 (or the interpreter), host descriptors, 16-byte aligned rows and >= 16-row pages."""
    if TensorDescriptor is None:
        return False
    if q.is_cuda and torch.cuda.get_device_capability(q.device)[0] < 9:
        return False
    head_dim, block_size = k_cache.shape[3], k_cache.shape[2]
    pow2 = lambda n: n & (n - 1) == 0  # noqa: E731 - tl.arange over box rows and head_dim
    return head_dim * k_cache.element_size() % 16 == 0 and 16 <= block_size <= 256 and pow2(block_size) \
        and head_dim >= 16 and pow2(head_dim)


@triton.jit
def _tma_tile(q, acc, m_i, l_i, kdesc, vdesc, row, t0, end, same_head, col_tok, s_mul, MASKED: tl.constexpr,
              DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    k = kdesc.load([row, 0])  # [R, D]: HPT kv heads x BS tokens of one page
    v = vdesc.load([row, 0])
    if DOT_F32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    else:
        k = k.to(q.dtype)
        v = v.to(q.dtype)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * s_mul[None, :]  # [M, R], log2 domain
    keep = same_head
    if MASKED:
        ok = t0 + col_tok < end  # [R]
        keep = keep & ok[None, :]
        v = tl.where(ok[:, None], v, 0.0)  # NaN in unwritten slots must not reach P V
    s = tl.where(keep, s, float("-inf"))
    return softmax_step(s, v, acc, m_i, l_i, PRECISION)


@triton.jit(do_not_specialize=["scale_log2", "num_seqs", "num_work", "split_len", "num_splits", "stride_bt"])
def _decode_tma_kernel(
    q_ptr, kdesc, vdesc, bt_ptr, ctx_ptr, out_ptr, mid_o_ptr, mid_lse_ptr, ks_ptr, vs_ptr,
    scale_log2, num_seqs, num_work, split_len, num_splits,
    stride_qs, stride_qh, stride_bt, stride_os, stride_oh,
    NUM_KV_HEADS: tl.constexpr, NUM_TILES: tl.constexpr, HPT: tl.constexpr, GROUP: tl.constexpr,
    M_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, WINDOW_PAGES: tl.constexpr,
    DIRECT: tl.constexpr,
    HAS_SCALES: tl.constexpr, NUM_STAGES: tl.constexpr, WARP_SPECIALIZE: tl.constexpr, DOT_F32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    r = tl.arange(0, M_PAD)  # query rows of the tile: local head r // GROUP (rows >= HPT * GROUP: padding)
    c = tl.arange(0, HPT * BLOCK_SIZE)  # box rows: local kv head c // BLOCK_SIZE, token c % BLOCK_SIZE
    d = tl.arange(0, HEAD_DIM)
    row_ok = r < HPT * GROUP
    # [M, R] the block diagonal; padding rows (q = 0) keep every column so their softmax stays finite
    same_head = ((r // GROUP)[:, None] == (c // BLOCK_SIZE)[None, :]) | ~row_ok[:, None]
    col_tok = c % BLOCK_SIZE
    pg = tl.arange(0, WINDOW_PAGES)
    for w in range(pid, num_work, nprog):
        tile = w % NUM_TILES
        seq = (w // NUM_TILES) % num_seqs
        split = w // (NUM_TILES * num_seqs)
        ctx = tl.load(ctx_ptr + seq)
        start = split * split_len  # a multiple of BLOCK_SIZE
        end = tl.where(split == num_splits - 1, ctx, tl.minimum(ctx, start + split_len))
        if (start < end) | DIRECT:
            h0 = tile * HPT
            heads = h0 * GROUP + r  # query heads
            q = tl.load(q_ptr + seq * stride_qs + heads[:, None] * stride_qh + d[None, :],
                        mask=row_ok[:, None], other=0.0)  # [M, D]
            if DOT_F32:
                q = q.to(tl.float32)
            s_mul = tl.full([HPT * BLOCK_SIZE], scale_log2, tl.float32)
            if HAS_SCALES:
                s_mul = s_mul * tl.load(ks_ptr + h0 + c // BLOCK_SIZE)
            m_i = tl.full([M_PAD], float("-inf"), tl.float32)
            l_i = tl.zeros([M_PAD], tl.float32)
            acc = tl.zeros([M_PAD, HEAD_DIM], tl.float32)
            bt_row = bt_ptr + seq * stride_bt
            full_end = end // BLOCK_SIZE * BLOCK_SIZE
            for w0 in range(start, full_end, WINDOW_PAGES * BLOCK_SIZE):
                # a window's page ids in registers; each iteration picks its own with a reduction, so no box
                # address depends on a load inside the pipelined loop (with one, Triton keeps one buffer)
                num_pages = tl.minimum(WINDOW_PAGES, (full_end - w0) // BLOCK_SIZE)
                pages = tl.load(bt_row + w0 // BLOCK_SIZE + pg, mask=pg < num_pages, other=0)
                for i in tl.range(0, num_pages, num_stages=NUM_STAGES, warp_specialize=WARP_SPECIALIZE):
                    blk = tl.sum(tl.where(pg == i, pages, 0))
                    row = (blk * NUM_KV_HEADS + h0) * BLOCK_SIZE
                    acc, m_i, l_i = _tma_tile(q, acc, m_i, l_i, kdesc, vdesc, row, w0 + i * BLOCK_SIZE, end,
                                              same_head, col_tok, s_mul, False, DOT_F32, PRECISION)
            if full_end < end:
                blk = tl.load(bt_row + full_end // BLOCK_SIZE)
                row = (blk * NUM_KV_HEADS + h0) * BLOCK_SIZE
                acc, m_i, l_i = _tma_tile(q, acc, m_i, l_i, kdesc, vdesc, row, full_end, end, same_head,
                                          col_tok, s_mul, True, DOT_F32, PRECISION)
            l_safe = tl.where(l_i > 0, l_i, 1.0)
            o = acc / l_safe[:, None]
            if HAS_SCALES:
                o = o * tl.load(vs_ptr + h0 + r // GROUP, mask=row_ok, other=1.0)[:, None]
            if DIRECT:
                tl.store(out_ptr + seq * stride_os + heads[:, None] * stride_oh + d[None, :],
                         o.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])
            else:  # mid_o [S, H, num_splits, D] fp32, mid_lse [S, H, num_splits] (log2 domain)
                mrow = (seq * (NUM_KV_HEADS * GROUP) + heads) * num_splits + split
                tl.store(mid_o_ptr + mrow[:, None] * HEAD_DIM + d[None, :], o, mask=row_ok[:, None])
                tl.store(mid_lse_ptr + mrow, m_i + tl.log2(l_safe), mask=row_ok)


def decode_attention_tma(q, k_cache, v_cache, block_tables, context_lens, scale, *, out=None, max_programs=None,
                         num_splits=None, config: TmaDecodeConfig | None = None, k_scale=None, v_scale=None):
    """TMA paged decode attention. q [S, H, D]; caches [NB, Hkv, BS, D] (q's dtype or float8_e4m3fn);
    k_scale / v_scale fp32 [Hkv] or None (= 1). -> [S, H, D] in q's dtype."""
    num_seqs, num_heads, head_dim = q.shape
    num_blocks, num_kv_heads, block_size, _ = k_cache.shape
    group = num_heads // num_kv_heads
    if not is_supported(q, k_cache):
        raise RuntimeError("decode_attention_tma needs sm >= 90, triton host tensor descriptors, "
                           "block_size >= 16 and 16-byte rows; use the 'split' decode kernel")
    assert num_heads % num_kv_heads == 0 and q.stride(-1) == 1
    assert k_cache.is_contiguous() and v_cache.is_contiguous() and k_cache.shape == v_cache.shape
    assert block_tables.dtype == torch.int32 and context_lens.dtype == torch.int32
    assert block_tables.stride(-1) == 1
    assert (k_scale is None) == (v_scale is None)
    if out is None:
        out = torch.empty_like(q)
    if num_seqs == 0:
        return out
    cfg = config or default_config(num_kv_heads, block_size, q.dtype, k_cache.element_size())
    # kv heads per box: a power of two (tl.arange) dividing Hkv, box rows <= 256 (TMA's limit per dimension)
    hpt = 1
    while 2 * hpt <= min(cfg.heads_per_tile, 256 // block_size) and num_kv_heads % (2 * hpt) == 0:
        hpt *= 2
    num_tiles = num_kv_heads // hpt
    rows = hpt * block_size
    kdesc = TensorDescriptor.from_tensor(k_cache.view(num_blocks * num_kv_heads * block_size, head_dim),
                                         [rows, head_dim])
    vdesc = TensorDescriptor.from_tensor(v_cache.view(num_blocks * num_kv_heads * block_size, head_dim),
                                         [rows, head_dim])
    max_context = block_tables.shape[1] * block_size
    budget = max_programs or num_sms(q.device.index if q.is_cuda else None)
    if num_splits is None:
        num_splits = choose_num_splits(num_seqs, num_tiles, max_context, budget)
    split_len = cdiv(cdiv(max_context, num_splits), block_size) * block_size
    num_splits = cdiv(max_context, split_len)
    direct = num_splits == 1
    if direct:
        mid_o = mid_lse = out  # unused
    else:
        mid_o = torch.empty(num_seqs, num_heads, num_splits, head_dim, dtype=torch.float32, device=q.device)
        mid_lse = torch.empty(num_seqs, num_heads, num_splits, dtype=torch.float32, device=q.device)
    num_work = num_splits * num_seqs * num_tiles
    grid = min(num_work, max_programs) if max_programs else num_work
    has_scales = k_scale is not None
    interpreted = is_interpreted(q)
    _decode_tma_kernel[(grid,)](
        q, kdesc, vdesc, block_tables, context_lens, out, mid_o, mid_lse,
        k_scale if has_scales else out, v_scale if has_scales else out,
        scale * 1.4426950408889634, num_seqs, num_work, split_len, num_splits,
        q.stride(0), q.stride(1), block_tables.stride(0), out.stride(0), out.stride(1),
        NUM_KV_HEADS=num_kv_heads, NUM_TILES=num_tiles, HPT=hpt, GROUP=group,
        M_PAD=max(16, cfg.min_rows, next_pow2(hpt * group)), HEAD_DIM=head_dim, BLOCK_SIZE=block_size,
        WINDOW_PAGES=next_pow2(cfg.window_pages), DIRECT=direct,
        HAS_SCALES=has_scales, NUM_STAGES=cfg.num_stages, WARP_SPECIALIZE=cfg.warp_specialize and not interpreted,
        DOT_F32=interpreted or q.dtype == torch.float32,
        PRECISION=dot_precision(q.dtype), num_warps=cfg.num_warps,
    )
    if not direct:
        num_items = num_seqs * num_heads
        rgrid = min(num_items, max_programs) if max_programs else num_items
        _decode_reduce_kernel[(rgrid,)](
            mid_o, mid_lse, context_lens, out, num_items, num_heads, num_splits, split_len,
            out.stride(0), out.stride(1), HEAD_DIM=head_dim, SPLITS_PAD=next_pow2(num_splits), num_warps=4,
        )
    return out
