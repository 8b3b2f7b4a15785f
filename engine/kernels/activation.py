"""SiLU-and-multiply for the gated MLP: x [T, 2*I] (gate | up) -> silu(gate) * up [T, I].

HF computes act_fn(gate_proj(x)) * up_proj(x) in the activation dtype: silu's result is rounded to that
dtype, then the product is rounded again. Both versions repeat those two roundings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.kernels._compat import cdiv, require_triton, round_to, tl, triton


def silu_and_mul_ref(x: torch.Tensor, *, out=None) -> torch.Tensor:
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up if out is None else torch.mul(F.silu(gate), up, out=out)


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_o, inter, BLOCK: tl.constexpr):
    # grid (tokens, cdiv(I, BLOCK)): each program reads BLOCK gates and BLOCK ups, writes BLOCK outputs
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    dt: tl.constexpr = x_ptr.dtype.element_ty
    g = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(x_ptr + row * stride_x + inter + cols, mask=mask, other=0.0).to(tl.float32)
    act = round_to(g / (1.0 + tl.exp(-g)), dt)  # rounded like HF's silu output
    tl.store(out_ptr + row * stride_o + cols, round_to(act * u, dt).to(dt), mask=mask)


def silu_and_mul(x: torch.Tensor, *, out=None) -> torch.Tensor:
    """Triton version of silu_and_mul_ref."""
    require_triton()
    two_i = x.shape[-1]
    inter = two_i // 2
    x2 = x.reshape(-1, two_i)
    assert x2.stride(-1) == 1 and two_i % 2 == 0
    if out is None:
        out = torch.empty(*x.shape[:-1], inter, dtype=x.dtype, device=x.device)
    o2 = out.view(-1, inter)
    block = 1024
    if x2.shape[0] > 0:
        _silu_and_mul_kernel[(x2.shape[0], cdiv(inter, block))](
            x2, o2, x2.stride(0), o2.stride(0), inter, BLOCK=block, num_warps=4,
            enable_fp_fusion=False,  # keep HF's separate roundings (no FMA contraction)
        )
    return out
