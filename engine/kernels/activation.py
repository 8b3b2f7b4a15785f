"""Activation-and-multiply for the gated MLP: x [T, 2*I] (gate | up) -> act(gate) * up [T, I].

act is one of engine.config.ACTIVATIONS (HF names): silu (= swish), gelu (erf form), gelu_pytorch_tanh.

HF computes act_fn(gate_proj(x)) * up_proj(x) in the activation dtype: silu's result is rounded to that
dtype, then the product is rounded again. Both versions repeat those two roundings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.kernels._compat import cdiv, require_triton, round_to, tl, triton

_ACT_REF = {"silu": F.silu, "swish": F.silu, "gelu": F.gelu,
            "gelu_pytorch_tanh": lambda t: F.gelu(t, approximate="tanh")}
_ACT_ID = {"silu": 0, "swish": 0, "gelu": 1, "gelu_pytorch_tanh": 2}  # the kernel's ACT constexpr


def silu_and_mul_ref(x: torch.Tensor, *, out=None, activation: str = "silu") -> torch.Tensor:
    gate, up = x.chunk(2, dim=-1)
    act = _ACT_REF[activation](gate)
    return act * up if out is None else torch.mul(act, up, out=out)


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_o, inter, BLOCK: tl.constexpr, ACT: tl.constexpr):
    # grid (tokens, cdiv(I, BLOCK)): each program reads BLOCK gates and BLOCK ups, writes BLOCK outputs
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    dt: tl.constexpr = x_ptr.dtype.element_ty
    g = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(x_ptr + row * stride_x + inter + cols, mask=mask, other=0.0).to(tl.float32)
    if ACT == 0:  # silu
        a = g / (1.0 + tl.exp(-g))
    elif ACT == 1:  # gelu, erf form
        a = 0.5 * g * (1.0 + tl.erf(g * 0.7071067811865476))
    else:  # gelu, tanh form, in torch's order: 0.5 g (1 + tanh(y)), y = sqrt(2 / pi) (g + 0.044715 g^3)
        y = 0.7978845608028654 * (g + 0.044715 * g * g * g)
        t = 1.0 - 2.0 / (1.0 + tl.exp(tl.minimum(2.0 * tl.abs(y), 60.0)))  # tanh |y|, accurate where 1 + tanh y cancels
        a = 0.5 * g * (1.0 + tl.where(y < 0, -t, t))
    act = round_to(a, dt)  # rounded like HF's activation output
    tl.store(out_ptr + row * stride_o + cols, round_to(act * u, dt).to(dt), mask=mask)


def silu_and_mul(x: torch.Tensor, *, out=None, activation: str = "silu") -> torch.Tensor:
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
            x2, o2, x2.stride(0), o2.stride(0), inter, BLOCK=block, ACT=_ACT_ID[activation], num_warps=4,
            enable_fp_fusion=False,  # keep HF's separate roundings (no FMA contraction)
        )
    return out
