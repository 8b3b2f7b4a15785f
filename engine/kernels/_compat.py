"""Optional Triton import, shared by every kernel file.

Triton is a Linux-only dependency and the CPU engine path must import without it, so each kernel file
takes `triton` / `tl` from here: when Triton is missing they are stand-ins that let the `@triton.jit`
definitions be declared (never launched), and HAS_TRITON says which one you got.
"""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only on machines without Triton
    HAS_TRITON = False

    def _jit(fn=None, **_kwargs):
        return fn if fn is not None else (lambda f: f)

    triton = SimpleNamespace(jit=_jit)
    tl = SimpleNamespace(constexpr=object)


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def require_triton() -> None:
    if not HAS_TRITON:
        raise RuntimeError("the 'triton' kernel backend needs the triton package (Linux); "
                           "use backend='torch'")


def is_interpreted(t: torch.Tensor) -> bool:
    """True when a Triton launch on `t` runs under TRITON_INTERPRET=1 (CPU tensors).

    The interpreter (triton 3.9) returns garbage from tl.dot on bf16 operands, so kernels upcast dot operands
    to fp32 when interpreted; on a GPU they keep the 16-bit tensor-core path.
    """
    return t.device.type == "cpu"


def dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs: exact fp32 products ("ieee"), not tf32, so fp32 results match the reference to ~1e-6.
    return "ieee" if dtype == torch.float32 else "tf32"


@functools.lru_cache(maxsize=8)
def num_sms(device_index: int | None = None) -> int:
    """Streaming multiprocessors of the CUDA device (132 on an H100 SXM); 132 on CPU so policies match."""
    if not torch.cuda.is_available():
        return 132
    idx = torch.cuda.current_device() if device_index is None else device_index
    return torch.cuda.get_device_properties(idx).multi_processor_count


# Decided when this module is imported (kernels are decorated at the same time, so the two agree).
INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1") if HAS_TRITON else False


@triton.jit
def round_to(x, DTYPE: tl.constexpr):
    """fp32 x -> the nearest DTYPE value (round to nearest even), still as fp32.

    Used where a kernel repeats Hugging Face's roundings to the activation dtype. On a GPU .to(bf16) rounds
    to nearest even (one cvt.rn instruction); the interpreter (triton 3.9) truncates instead, so there bf16
    is rounded with integer ops and the casts that follow are exact.
    """
    # only compile-time (constexpr) branches and one return: a runtime-looking condition would make Triton
    # compile both sides and mishandle the early returns
    if DTYPE == tl.float32:
        y = x
    elif INTERPRETED:
        if DTYPE == tl.bfloat16:
            bits = x.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            y = bits.to(tl.float32, bitcast=True)
        else:
            y = x.to(DTYPE).to(tl.float32)
    else:
        y = x.to(DTYPE).to(tl.float32)
    return y


@triton.jit
def to_fp8_e4m3(x):
    """fp32 x -> float8_e4m3fn, saturated to +-448, round to nearest even.

    On a GPU the cast is one cvt.rn.satfinite; the interpreter (triton 3.9) misrounds ~2% of values, so there
    x is first rounded to e4m3's grid with integer ops (3 mantissa bits; subnormal steps of 2^-9 below 2^-6)
    and the cast that follows is exact."""
    x = tl.clamp(x, -448.0, 448.0)
    if INTERPRETED:
        bits = x.to(tl.uint32, bitcast=True)
        normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) & 0xFFF00000).to(tl.float32, bitcast=True)
        x = tl.where(tl.abs(x) < 0.015625, (x + 24576.0) - 24576.0, normal)  # fp32 ulp of 24576 is 2^-9
    return x.to(tl.float8e4nv)
