"""Rotary position embedding, neox/HF style, in place on q and k; and the cos/sin cache that feeds it.

cos_sin_cache [max_position, D] fp32: cos of the D/2 frequencies in the first half, sin in the second.
It is computed like HF's LlamaRotaryEmbedding: freqs = position.float() * inv_freq (fp32), cos/sin in fp32.
HF then casts cos/sin to the activation dtype and computes q*cos + rotate_half(q)*sin in that dtype (each
product and the sum rounded). Both versions here round at the same places (cos/sin, the two products,
the sum), so bf16 matches HF up to the ulp differences of the fp32 cos/sin between CPU and GPU libm.
"""

from __future__ import annotations

import math

import torch

from engine.kernels._compat import next_pow2, require_triton, round_to, tl, triton


def rope_inv_freq(head_dim: int, theta: float, rope_scaling: dict | None = None, device=None) -> torch.Tensor:
    """inv_freq [D/2] fp32, as transformers' ROPE_INIT_FUNCTIONS (default, linear, llama3)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(device, torch.float) / head_dim
    inv_freq = 1.0 / (theta**exponents)
    rope_type = (rope_scaling or {}).get("rope_type", (rope_scaling or {}).get("type", "default"))
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        return inv_freq / rope_scaling["factor"]
    if rope_type == "llama3":
        factor = rope_scaling["factor"]
        low, high = rope_scaling["low_freq_factor"], rope_scaling["high_freq_factor"]
        old_len = rope_scaling["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv_freq
        # long wavelengths (low frequencies) are slowed by `factor`, short ones kept, the band between blended
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        return torch.where(is_medium, smoothed, scaled)
    raise ValueError(f"rope_scaling type {rope_type!r} is not supported (default, linear, llama3)")


def build_cos_sin_cache(head_dim, max_position, theta, rope_scaling=None, device=None) -> torch.Tensor:
    """-> [max_position, head_dim] fp32: cos(pos * inv_freq) | sin(pos * inv_freq)."""
    inv_freq = rope_inv_freq(head_dim, theta, rope_scaling, device)
    freqs = torch.arange(max_position, dtype=torch.float, device=device)[:, None] * inv_freq[None, :]
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1).contiguous()


def _rotate_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x [T, H, D]; cos, sin [T, 1, D/2] already in x's dtype, as HF casts them
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def apply_rope_ref(q, k, positions, cos_sin_cache) -> None:
    """In place. q [T, H, D], k [T, Hkv, D], positions int64 [T]."""
    cos, sin = cos_sin_cache[positions].chunk(2, dim=-1)  # [T, D/2] each
    cos, sin = cos[:, None, :], sin[:, None, :]
    q.copy_(_rotate_ref(q, cos.to(q.dtype), sin.to(q.dtype)))
    k.copy_(_rotate_ref(k, cos.to(k.dtype), sin.to(k.dtype)))


@triton.jit
def _rotate(ptr, stride_t, stride_h, t, cos, sin, num_heads, HEADS_PAD: tl.constexpr, HALF: tl.constexpr):
    h = tl.arange(0, HEADS_PAD)[:, None]
    d = tl.arange(0, HALF)[None, :]
    mask = h < num_heads
    p1 = ptr + t * stride_t + h * stride_h + d  # [HEADS_PAD, HALF]: first halves; +HALF: second halves
    x1 = tl.load(p1, mask=mask, other=0.0)
    x2 = tl.load(p1 + HALF, mask=mask, other=0.0)
    dt: tl.constexpr = x1.dtype
    c = round_to(cos, dt)
    s = round_to(sin, dt)
    f1, f2 = x1.to(tl.float32), x2.to(tl.float32)
    # round each product and the sum to the activation dtype, as HF's `q*cos + rotate_half(q)*sin` does
    o1 = round_to(round_to(f1 * c, dt) - round_to(f2 * s, dt), dt)
    o2 = round_to(round_to(f2 * c, dt) + round_to(f1 * s, dt), dt)
    tl.store(p1, o1.to(dt), mask=mask)
    tl.store(p1 + HALF, o2.to(dt), mask=mask)


@triton.jit
def _rope_kernel(
    q_ptr, k_ptr, pos_ptr, cs_ptr, stride_qt, stride_qh, stride_kt, stride_kh, stride_cs,
    num_heads, num_kv_heads, QH_PAD: tl.constexpr, KH_PAD: tl.constexpr, HALF: tl.constexpr,
):
    # one program per token: cos/sin row read once, applied to all q and k heads of the token
    t = tl.program_id(0)
    pos = tl.load(pos_ptr + t)
    d = tl.arange(0, HALF)[None, :]
    cos = tl.load(cs_ptr + pos * stride_cs + d)  # [1, HALF] fp32
    sin = tl.load(cs_ptr + pos * stride_cs + HALF + d)
    _rotate(q_ptr, stride_qt, stride_qh, t, cos, sin, num_heads, QH_PAD, HALF)
    _rotate(k_ptr, stride_kt, stride_kh, t, cos, sin, num_kv_heads, KH_PAD, HALF)


def apply_rope(q, k, positions, cos_sin_cache) -> None:
    """Triton version of apply_rope_ref (in place). q/k may be strided views of a fused qkv tensor."""
    require_triton()
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    assert q.stride(-1) == 1 and k.stride(-1) == 1 and cos_sin_cache.stride(-1) == 1
    assert positions.dtype == torch.int64 and cos_sin_cache.dtype == torch.float32
    if num_tokens == 0:
        return
    _rope_kernel[(num_tokens,)](
        q, k, positions, cos_sin_cache, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        cos_sin_cache.stride(0), num_heads, num_kv_heads,
        QH_PAD=next_pow2(num_heads), KH_PAD=next_pow2(num_kv_heads), HALF=head_dim // 2, num_warps=4,
        enable_fp_fusion=False,  # else LLVM turns `a*c - b*s` into one bf16 FMA: a rounding HF does not do
    )
