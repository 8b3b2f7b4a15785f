"""Write new tokens' K/V into the paged cache.

Cache layout (per layer): k_cache, v_cache [num_blocks, num_kv_heads, block_size, head_dim]; the token at
slot s lives in block s // block_size at offset s % block_size. slot < 0 means "skip" (padding tokens of
a CUDA-graph bucket), so the engine never has to trim its inputs.
"""

from __future__ import annotations

import torch

from engine.kernels._compat import next_pow2, require_triton, tl, to_fp8_e4m3, triton

FP8_MAX = 448.0  # largest finite float8_e4m3fn


def quantize_ref(x: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """x [T, Hkv, D] -> the cache's dtype; with scale fp32 [Hkv] (fp8 cache): x / scale, saturated to +-448."""
    if scale is None:
        return x.to(dtype)
    return (x.float() / scale.float().view(1, -1, 1)).clamp(-FP8_MAX, FP8_MAX).to(dtype)


def store_kv_ref(k, v, k_cache, v_cache, slot_mapping, *, k_scale=None, v_scale=None) -> None:
    """Torch reference (and CPU path). k, v [T, Hkv, D]; slot_mapping int64 [T]; k_scale, v_scale fp32 [Hkv]
    for an fp8 cache (stores K / k_scale) or None."""
    block_size = k_cache.shape[2]
    keep = slot_mapping >= 0  # [T]
    slots = slot_mapping[keep]
    blocks, offsets = slots // block_size, slots % block_size
    # advanced indexing on dims 0 and 2 puts the token dim first: k_cache[blocks, :, offsets] is [T', Hkv, D]
    k_cache[blocks, :, offsets] = quantize_ref(k[keep], k_scale, k_cache.dtype)
    v_cache[blocks, :, offsets] = quantize_ref(v[keep], v_scale, v_cache.dtype)


@triton.jit
def _store_kv_kernel(
    k_ptr, v_ptr, kc_ptr, vc_ptr, slot_ptr, ks_ptr, vs_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_cb, stride_ch, stride_ct,
    NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, HEADS_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    HAS_SCALES: tl.constexpr,
):
    # one program per token: all kv heads of it, [HEADS_PAD, HEAD_DIM] (Llama-3-8B: 8 x 128 = 4 KB of bf16)
    t = tl.program_id(0)
    slot = tl.load(slot_ptr + t)
    if slot >= 0:
        h = tl.arange(0, HEADS_PAD)[:, None]
        d = tl.arange(0, HEAD_DIM)[None, :]
        mask = h < NUM_KV_HEADS
        blk = slot // BLOCK_SIZE
        # slot is int64, so the offset is too: no overflow in caches of > 2^31 elements
        dst = blk * stride_cb + h * stride_ch + (slot % BLOCK_SIZE) * stride_ct + d
        kk = tl.load(k_ptr + t * stride_kt + h * stride_kh + d, mask=mask)
        vv = tl.load(v_ptr + t * stride_vt + h * stride_vh + d, mask=mask)
        if HAS_SCALES:  # fp8 cache: x / scale[head], saturated to the largest finite e4m3
            kk = to_fp8_e4m3(kk.to(tl.float32) / tl.load(ks_ptr + h, mask=h < NUM_KV_HEADS, other=1.0))
            vv = to_fp8_e4m3(vv.to(tl.float32) / tl.load(vs_ptr + h, mask=h < NUM_KV_HEADS, other=1.0))
        tl.store(kc_ptr + dst, kk.to(kc_ptr.dtype.element_ty), mask=mask)
        tl.store(vc_ptr + dst, vv.to(vc_ptr.dtype.element_ty), mask=mask)


def store_kv(k, v, k_cache, v_cache, slot_mapping, *, k_scale=None, v_scale=None) -> None:
    """Triton version of store_kv_ref; same arguments. In place, returns nothing."""
    require_triton()
    num_tokens, num_kv_heads, head_dim = k.shape
    assert k.stride(-1) == 1 and v.stride(-1) == 1 and k_cache.is_contiguous() and v_cache.is_contiguous()
    assert k_cache.stride() == v_cache.stride() and slot_mapping.dtype == torch.int64
    if num_tokens == 0:
        return
    _store_kv_kernel[(num_tokens,)](
        k, v, k_cache, v_cache, slot_mapping,
        k_cache if k_scale is None else k_scale, v_cache if v_scale is None else v_scale,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, HEADS_PAD=next_pow2(num_kv_heads),
        BLOCK_SIZE=k_cache.shape[2], HAS_SCALES=k_scale is not None, num_warps=4,
    )
