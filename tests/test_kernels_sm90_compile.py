"""The TMA decode kernel compiled for sm90 on a machine without a GPU (Triton's own ptxas), and the property
that motivates its page-id windows: the K/V boxes are multi-buffered (num_stages - 1 in flight). A box
address that depends on a load inside the loop makes Triton keep one buffer whatever num_stages says.

Compiled in a subprocess: other test files switch the kernels to the interpreter (TRITON_INTERPRET=1).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.kernels._compat import HAS_TRITON

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
ROOT = Path(__file__).resolve().parents[1]

COMPILE = r"""
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from engine.kernels import decode_attention_tma as dt
kv, (num_stages, hpt, num_warps, m_pad), scales = sys.argv[1], map(int, sys.argv[2:6]), sys.argv[6] == "1"
rows = hpt * 16
consts = dict(NUM_KV_HEADS=8, NUM_TILES=8 // hpt, HPT=hpt, GROUP=4, M_PAD=m_pad, HEAD_DIM=128, BLOCK_SIZE=16,
              WINDOW_PAGES=32, DIRECT=False, HAS_SCALES=scales, NUM_STAGES=num_stages, WARP_SPECIALIZE=False,
              DOT_F32=False, PRECISION="tf32")
types = {"q_ptr": "*bf16", "kdesc": f"tensordesc<{kv}[{rows}, 128]>", "vdesc": f"tensordesc<{kv}[{rows}, 128]>",
         "bt_ptr": "*i32", "ctx_ptr": "*i32", "out_ptr": "*bf16", "mid_o_ptr": "*fp32", "mid_lse_ptr": "*fp32",
         "ks_ptr": "*fp32", "vs_ptr": "*fp32", "scale_log2": "fp32"}
sig = {n: "constexpr" if n in consts else types.get(n, "i32") for n in dt._decode_tma_kernel.arg_names}
k = triton.compile(ASTSource(fn=dt._decode_tma_kernel, signature=sig, constexprs=consts),
                   target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
bufs = sorted({line.split("memdesc<")[1].split(",")[0] for line in k.asm["ttgir"].splitlines()
               if "local_alloc" in line and f"x{rows}x128x" in line and "memdesc<" in line})
print(json.dumps({"buffers": bufs, "shared": k.metadata.shared, "wgmma": "warp_group_dot" in k.asm["ttgir"]}))
"""


def _compile(kv: str, num_stages: int, heads_per_tile: int = 8, num_warps: int = 8, m_pad: int = 32,
             scales: bool = False) -> dict:
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.backends.nvidia import compiler  # noqa: F401
    except ImportError:
        pytest.skip("this triton has no CUDA backend to compile ahead of time")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    args = [kv, str(num_stages), str(heads_per_tile), str(num_warps), str(m_pad), "1" if scales else "0"]
    proc = subprocess.run([sys.executable, "-c", COMPILE, *args], env=env, capture_output=True, text=True,
                          timeout=300)
    if proc.returncode and "ptxas" in proc.stderr and "No such file" in proc.stderr:
        pytest.skip("no ptxas bundled with this triton")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _num_buffers(k: dict, box: str) -> int:
    (shape,) = k["buffers"]  # one kind of K/V box buffer
    count, rest = shape.split("x", 1)
    assert rest == box
    return int(count)


@pytest.mark.parametrize("num_stages,m_pad", [(3, 32), (4, 32), (3, 64)])
def test_tma_boxes_are_multi_buffered_bf16(num_stages, m_pad):
    # m_pad 32: mma.sync; 64: wgmma (the default config). Either way >= num_stages - 1 boxes in flight.
    k = _compile("bf16", num_stages, num_warps=4, m_pad=m_pad)
    assert _num_buffers(k, "128x128xbf16") >= num_stages - 1
    assert k["wgmma"] == (m_pad >= 64)
    assert k["shared"] <= 227 * 1024  # an H100/H200 block's shared memory


def test_tma_fp8_compiles_multi_buffered():
    k = _compile("fp8e4nv", 4, num_warps=4, m_pad=64, scales=True)  # the fp8 default config
    assert _num_buffers(k, "128x128xf8E4M3FN") >= 3 and k["shared"] <= 227 * 1024
