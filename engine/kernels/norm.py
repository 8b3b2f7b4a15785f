"""RMSNorm and fused residual-add + RMSNorm, with Hugging Face Llama's rounding order.

HF LlamaRMSNorm: h = x.float(); h = h * rsqrt(mean(h^2) + eps); return weight * h.to(x.dtype).
So the normalized value is rounded to the activation dtype BEFORE the weight multiply, and the product is
rounded again. The decoder layer adds the residual in the activation dtype (one rounding) and normalizes
the rounded sum. Both versions here repeat exactly those roundings, so bf16 outputs match HF bit for bit
up to the rsqrt/mean ulps.
"""

from __future__ import annotations

import torch

from engine.kernels._compat import next_pow2, require_triton, round_to, tl, triton


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float, *, out=None) -> torch.Tensor:
    """x [..., H], weight [H] -> [..., H] in x's dtype (written into `out` when given)."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    res = (weight.to(x.dtype) * h.to(x.dtype)).to(x.dtype)
    return res if out is None else out.copy_(res)


def add_rms_norm_ref(x, residual, weight, eps, *, out=None, residual_out=None):
    """-> (rms_norm(x + residual), x + residual), the sum taken in the activation dtype like HF.

    residual_out may be `residual` itself (the engine updates the residual stream in place).
    """
    total = x + residual
    if residual_out is not None:
        total = residual_out.copy_(total)
    return rms_norm_ref(total, weight, eps, out=out), total


@triton.jit
def _rms_norm_kernel(
    x_ptr, r_ptr, w_ptr, out_ptr, res_out_ptr, peers_ptr,
    stride_x, stride_r, stride_o, stride_ro, hidden, eps,
    HAS_RESIDUAL: tl.constexpr, NUM_PEERS: tl.constexpr, BLOCK_H: tl.constexpr,
):
    # one program per row; the whole row [BLOCK_H] stays in registers (hidden <= 16k)
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_H)
    mask = cols < hidden
    dt: tl.constexpr = x_ptr.dtype.element_ty
    if NUM_PEERS > 0:
        # x is an all-reduce's result: the sum of NUM_PEERS ranks' rows, each read from that rank's buffer
        # (peers_ptr [NUM_PEERS] int64 addresses, rank order: every rank sums in one order, same bits),
        # rounded to the activation dtype as the all-reduce's output tensor would be
        xf = tl.zeros([BLOCK_H], tl.float32)
        for p in tl.static_range(NUM_PEERS):
            src = tl.load(peers_ptr + p).to(tl.pointer_type(dt))
            xf += tl.load(src + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        xf = round_to(xf, dt)
    else:
        xf = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(r_ptr + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
        xf = round_to(xf + r, dt)  # HF: the sum is taken in the activation dtype
        tl.store(res_out_ptr + row * stride_ro + cols, xf.to(dt), mask=mask)
    var = tl.sum(xf * xf, axis=0) / hidden
    normed = round_to(xf * tl.rsqrt(var + eps), dt)  # HF rounds before the weight multiply
    w = round_to(tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32), dt)
    tl.store(out_ptr + row * stride_o + cols, round_to(normed * w, dt).to(dt), mask=mask)


def _launch(x, residual, weight, eps, out, residual_out, peers=None):
    require_triton()
    hidden = x.shape[-1]
    x2 = x.reshape(-1, hidden)
    assert x2.stride(-1) == 1 and weight.is_contiguous()
    out = torch.empty_like(x) if out is None else out
    o2 = out.view(-1, hidden)  # view, not reshape: results must land in the caller's tensor
    if residual is not None:
        residual_out = torch.empty_like(x) if residual_out is None else residual_out
        r2, ro2 = residual.reshape(-1, hidden), residual_out.view(-1, hidden)
    else:
        r2 = ro2 = x2  # unused
    block = next_pow2(hidden)
    # 16-byte vectors per thread: 8 bf16 elements; a 4096-wide row is 512 vectors -> 8 warps
    num_warps = max(1, min(16, block // 512))
    if x2.shape[0] > 0:
        _rms_norm_kernel[(x2.shape[0],)](
            x2, r2, weight, o2, ro2, x2 if peers is None else peers,
            x2.stride(0), r2.stride(0), o2.stride(0), ro2.stride(0), hidden, eps,
            HAS_RESIDUAL=residual is not None, NUM_PEERS=0 if peers is None else peers.numel(), BLOCK_H=block,
            num_warps=num_warps,
            enable_fp_fusion=False,  # keep HF's separate roundings (no FMA contraction)
        )
    return out, residual_out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, *, out=None) -> torch.Tensor:
    """Triton version of rms_norm_ref."""
    return _launch(x, None, weight, eps, out, None)[0]


def add_rms_norm(x, residual, weight, eps, *, out=None, residual_out=None):
    """x, residual [..., H] -> (normed, residual_out); one read of each input, one write of each output.

    residual_out may alias residual: each program reads its whole row before writing it.
    """
    assert residual.shape == x.shape and residual.dtype == x.dtype
    return _launch(x, residual, weight, eps, out, residual_out)


def peer_sum_add_rms_norm(peers, x, residual, weight, eps, *, out=None, residual_out=None):
    """An all-reduce fused with the residual add and RMSNorm that follow it: x [rows, H] is this rank's own
    buffer view (the shape, dtype and row stride every rank's buffer has; its values are read through
    `peers` like the others'), peers [num_ranks] int64 the device addresses of every rank's buffer in rank
    order. -> (rms_norm(sum + residual), sum + residual), the sum rounded to x's dtype first, as add_rms_norm
    of the all-reduced x would give. The caller makes the peers' rows visible first (a barrier)."""
    assert peers.dtype == torch.int64 and peers.device == x.device and x.is_contiguous()
    assert residual.shape == x.shape and residual.dtype == x.dtype
    return _launch(x, residual, weight, eps, out, residual_out, peers=peers)


def peer_sum_add_rms_norm_ref(parts, residual, weight, eps, *, out=None, residual_out=None):
    """parts: every rank's x [rows, H], rank order -> add_rms_norm_ref of their sum (fp32, rounded once)."""
    total = parts[0].float()
    for p in parts[1:]:  # rank order, as the kernel sums
        total = total + p.float()
    total = total.to(parts[0].dtype)
    return add_rms_norm_ref(total, residual, weight, eps, out=out, residual_out=residual_out)
