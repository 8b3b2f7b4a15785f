"""A streaming HBM read on a bounded persistent grid: how fast P programs can read memory that nothing else
touches. The power section (power.py) times it at several P, alone and beside a GEMM.

x: bf16 [rows, COLS], read as tiles of ROWS x COLS. Program pid sums tiles pid, pid + P, ... into an fp32
[ROWS, COLS] accumulator (so no load is optimized away) and writes its column sums: out [P, COLS] fp32.
Two ways to load a tile:
- "tma": a TMA tensor descriptor (Hopper and later; built on the host), the copy engine keeping several
  tiles in flight per SM (tl.range num_stages);
- "ptr": plain pointer loads (any GPU, and the Triton interpreter on CPU for tests).
"""

from __future__ import annotations

import torch

from engine.kernels._compat import HAS_TRITON, tl, triton

ROWS, COLS = 64, 256  # a 32 KiB bf16 tile
STAGES = 4
NUM_WARPS = 4


@triton.jit
def _read_ptr(x_ptr, out_ptr, num_tiles, ROWS: tl.constexpr, COLS: tl.constexpr, STAGES: tl.constexpr):
    pid = tl.program_id(0)
    r = tl.arange(0, ROWS)
    c = tl.arange(0, COLS)
    acc = tl.zeros([ROWS, COLS], tl.float32)
    for t in tl.range(pid, num_tiles, tl.num_programs(0), num_stages=STAGES):
        row = (t * ROWS + r).to(tl.int64)  # int64: a buffer of 2^31 elements or more stays addressable
        acc += tl.load(x_ptr + row[:, None] * COLS + c[None, :]).to(tl.float32)
    tl.store(out_ptr + pid * COLS + c, tl.sum(acc, 0))


@triton.jit
def _read_tma(desc, out_ptr, num_tiles, ROWS: tl.constexpr, COLS: tl.constexpr, STAGES: tl.constexpr):
    pid = tl.program_id(0)
    c = tl.arange(0, COLS)
    acc = tl.zeros([ROWS, COLS], tl.float32)
    for t in tl.range(pid, num_tiles, tl.num_programs(0), num_stages=STAGES):
        acc += desc.load([t * ROWS, 0]).to(tl.float32)
    tl.store(out_ptr + pid * COLS + c, tl.sum(acc, 0))


def read_buffer(nbytes: int, device, seed: int = 0) -> torch.Tensor:
    """Random bf16 [rows, COLS] of about nbytes (whole tiles); random, not zeros: the read must be real."""
    rows = max(ROWS, nbytes // (2 * COLS) // ROWS * ROWS)
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(rows, COLS, device=device, dtype=torch.bfloat16, generator=gen)


def can_tma(device: torch.device) -> tuple[bool, str | None]:
    """(TMA loads usable here, why not)."""
    if not HAS_TRITON:
        return False, "triton is not installed"
    if device.type != "cuda":
        return False, "TMA needs a CUDA GPU"
    if torch.cuda.get_device_capability(device)[0] < 9:
        return False, "TMA needs compute capability 9.0 (Hopper) or later"
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: F401
    except ImportError:
        return False, "this triton has no host tensor descriptors"
    return True, None


def read_fn(x: torch.Tensor, programs: int, load: str = "ptr"):
    """fn(i) reading all of x on `programs` programs; returns (fn, out). load: "ptr" | "tma"."""
    if not HAS_TRITON:
        raise RuntimeError("the read probe needs triton")
    num_tiles = x.shape[0] // ROWS
    out = torch.empty(programs, COLS, device=x.device, dtype=torch.float32)
    if load == "tma":
        from triton.tools.tensor_descriptor import TensorDescriptor

        first = TensorDescriptor.from_tensor(x, [ROWS, COLS])
        kernel = _read_tma
    elif load == "ptr":
        first, kernel = x, _read_ptr
    else:
        raise ValueError(f"load '{load}': expected ptr or tma")

    def fn(i: int = 0) -> None:
        kernel[(programs,)](first, out, num_tiles, ROWS=ROWS, COLS=COLS, STAGES=STAGES, num_warps=NUM_WARPS)

    return fn, out


def read_reference(x: torch.Tensor, programs: int) -> torch.Tensor:
    """What out holds after a read: program p's column sums over tiles p, p + P, ... (fp32)."""
    tiles = x.view(-1, ROWS, COLS).float()
    out = torch.zeros(programs, COLS, dtype=torch.float32, device=x.device)
    for p in range(programs):
        out[p] = tiles[p::programs].sum(dim=(0, 1))
    return out
