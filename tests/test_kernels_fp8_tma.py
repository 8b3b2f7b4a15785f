"""FP8 (e4m3) KV cache and the TMA decode kernel: the torch references against float64 naive attention on the
dequantized cache, the Triton kernels (interpreter on CPU, compiled on a GPU) against the references.

Scales are per kv head (fp32 [Hkv]) and deliberately not 1, so a kernel that drops one fails.
"""

import random

import pytest
import torch

from engine.kernels import decode_attention as da
from engine.kernels import decode_attention_tma as dt
from engine.kernels import prefill_attention as pa
from engine.kernels import store_kv as sk
from engine.kernels.testing import assert_close, make_paged_kv, naive_attention_f64, triton_test_device

DEV = triton_test_device()
needs_triton = pytest.mark.skipif(DEV is None, reason="triton is not installed")
FP8 = torch.float8_e4m3fn


def _fp8_case(lens, num_heads, num_kv_heads, head_dim, dtype, device, seed):
    """A paged cache quantized to e4m3 with per-head scales (amax / 448 scaled by 1.5 so no head is at 1)."""
    torch.manual_seed(seed)
    kc, vc, bt, dk, dv = make_paged_kv(lens, num_kv_heads, head_dim, 16, dtype, device, seed=seed)
    scales = []
    for c in (kc, vc):
        amax = c.float().nan_to_num(0.0).abs().amax(dim=(0, 2, 3))
        scales.append((amax / 448.0 * 1.5).to(device))
    kq = (kc.float() / scales[0].view(1, -1, 1, 1)).to(FP8)  # NaN stays NaN: unwritten slots stay poisoned
    vq = (vc.float() / scales[1].view(1, -1, 1, 1)).to(FP8)
    q = torch.randn(len(lens), num_heads, head_dim).to(dtype).to(device)
    return q, kq, vq, bt, scales[0], scales[1]


def _dequant_dense(cache, scale, bt, lens, block_size=16):
    out = []
    for s, n in enumerate(lens):
        j = torch.arange(n)
        out.append(cache[bt[s, j // block_size].long().cpu(), :, j % block_size].float().cpu()
                   * scale.cpu().view(1, -1, 1))
    return out  # [L, Hkv, D] per sequence


def test_fp8_store_ref_roundtrip():
    torch.manual_seed(0)
    k = torch.randn(10, 2, 32) * 3
    v = torch.randn(10, 2, 32)
    kc = torch.zeros(4, 2, 16, 32, dtype=FP8)
    vc = torch.zeros_like(kc)
    ks, vs = k.abs().amax(dim=(0, 2)) / 448 * 1.2, v.abs().amax(dim=(0, 2)) / 448 * 1.2  # [Hkv]
    slots = torch.tensor([0, 1, 2, 17, 18, -1, 40, 41, 63, 5])
    sk.store_kv_ref(k, v, kc, vc, slots, k_scale=ks, v_scale=vs)
    keep = slots >= 0
    back = kc[slots[keep] // 16, :, slots[keep] % 16].float() * ks.view(1, -1, 1)
    # e4m3: 3 mantissa bits, half an ulp = 1/16 relative; below 2^-6 * scale subnormal steps of 2^-9 * scale
    bound = k[keep].abs() / 16 + 2.0**-10 * ks.view(1, -1, 1)
    assert ((back - k[keep]).abs() <= bound * 1.001).all()
    # saturates instead of NaN when a value exceeds 448 * scale
    kc2 = torch.zeros_like(kc)
    sk.store_kv_ref(k * 1e4, v, kc2, vc, slots, k_scale=ks, v_scale=vs)
    assert not torch.isnan(kc2.float()).any() and kc2.float().abs().max() == 448.0


@needs_triton
def test_fp8_store_triton_matches_ref():
    torch.manual_seed(1)
    k = (torch.randn(12, 4, 64) * 2).to(DEV)
    v = torch.randn(12, 4, 64).to(DEV)
    ks = torch.tensor([0.01, 0.02, 0.03, 0.005]).to(DEV)
    vs = torch.tensor([0.004, 0.01, 0.02, 0.008]).to(DEV)
    slots = torch.tensor([3, 4, 5, -1, 20, 21, 33, 34, 35, 36, 60, 61]).to(DEV)
    caches = [torch.zeros(4, 4, 16, 64, dtype=FP8, device=DEV) for _ in range(4)]
    sk.store_kv_ref(k, v, caches[0], caches[1], slots, k_scale=ks, v_scale=vs)
    sk.store_kv(k, v, caches[2], caches[3], slots, k_scale=ks, v_scale=vs)
    for ref, out in ((caches[0], caches[2]), (caches[1], caches[3])):
        assert torch.equal(ref.float(), out.float())  # both x / scale in fp32, rounded to nearest even


@pytest.mark.parametrize("group", [1, 4])
def test_fp8_decode_ref_matches_naive_on_dequantized(group):
    lens = [1, 16, 17, 75]
    q, kq, vq, bt, ks, vs = _fp8_case(lens, 2 * group, 2, 32, torch.float32, "cpu", seed=group)
    out = da.decode_attention_ref(q, kq, vq, bt, torch.tensor(lens, dtype=torch.int32), 0.2, k_scale=ks, v_scale=vs)
    dk, dv = _dequant_dense(kq, ks, bt, lens), _dequant_dense(vq, vs, bt, lens)
    ref = torch.cat([naive_attention_f64(q[s:s + 1], dk[s], dv[s], torch.tensor([n - 1]), 0.2)
                     for s, n in enumerate(lens)])
    assert_close(out, ref, torch.float32)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kernel", ["split", "tma"])
@pytest.mark.parametrize("splits,max_programs", [(None, None), (3, 5)])
def test_fp8_decode_triton_matches_ref(dtype, kernel, splits, max_programs):
    lens = [1, 16, 17, 75, 130]
    q, kq, vq, bt, ks, vs = _fp8_case(lens, 8, 2, 32, dtype, DEV, seed=3)
    ctx = torch.tensor(lens, dtype=torch.int32, device=DEV)
    ref = da.decode_attention_ref(q, kq, vq, bt, ctx, 0.3, k_scale=ks, v_scale=vs)
    out = torch.full_like(q, float("nan"))
    fn = da.decode_attention if kernel == "split" else dt.decode_attention_tma
    fn(q, kq, vq, bt, ctx, 0.3, out=out, num_splits=splits, max_programs=max_programs, k_scale=ks, v_scale=vs)
    assert_close(out, ref, dtype)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_prefill_triton_matches_ref(dtype):
    chunks = [(0, 1), (0, 23), (40, 9), (100, 37)]
    lens = [p + c for p, c in chunks]
    q_full, kq, vq, bt, ks, vs = _fp8_case(lens, 8, 2, 32, dtype, DEV, seed=5)
    q = torch.randn(sum(c for _, c in chunks), 8, 32).to(dtype).to(DEV)
    cu = torch.tensor([0, 1, 24, 33, 70], dtype=torch.int32, device=DEV)
    sl = torch.tensor(lens, dtype=torch.int32, device=DEV)
    ref = pa.prefill_attention_ref(q, kq, vq, bt, sl, cu, 0.2, max_seqlen_q=37, k_scale=ks, v_scale=vs)
    out = torch.full_like(q, float("nan"))
    pa.prefill_attention(q, kq, vq, bt, sl, cu, 0.2, max_seqlen_q=37, out=out, k_scale=ks, v_scale=vs)
    assert_close(out, ref, dtype)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("group,num_kv_heads,hpt", [(4, 2, 2), (1, 4, 2), (8, 2, 1), (4, 4, 4)])
@pytest.mark.parametrize("splits,max_programs", [(None, None), (1, None), (3, None), (4, 5)])
def test_tma_decode_matches_ref(dtype, group, num_kv_heads, hpt, splits, max_programs):
    lens = [1, 16, 17, 75, 130]
    torch.manual_seed(group * num_kv_heads)
    kc, vc, bt, _, _ = make_paged_kv(lens, num_kv_heads, 32, 16, dtype, DEV)
    q = torch.randn(len(lens), group * num_kv_heads, 32).to(dtype).to(DEV)
    ctx = torch.tensor(lens, dtype=torch.int32, device=DEV)
    ref = da.decode_attention_ref(q, kc, vc, bt, ctx, 0.3)
    out = torch.full_like(q, float("nan"))
    # windows of 2 pages: several windows per work item (130 tokens = 8 full pages + a partial one)
    cfg = dt.TmaDecodeConfig(heads_per_tile=hpt, num_warps=4, num_stages=2, window_pages=2)
    res = dt.decode_attention_tma(q, kc, vc, bt, ctx, 0.3, out=out, num_splits=splits, max_programs=max_programs,
                                  config=cfg)
    assert res is out
    assert_close(out, ref, dtype)


@needs_triton
def test_tma_decode_empty_context_gives_zeros():
    lens = [0, 5, 33]
    kc, vc, bt, _, _ = make_paged_kv(lens, 2, 64, 16, torch.float32, DEV, seed=2)
    q = torch.randn(3, 4, 64).to(DEV)
    ctx = torch.tensor(lens, dtype=torch.int32, device=DEV)
    out = dt.decode_attention_tma(q, kc, vc, bt, ctx, 0.1)
    assert_close(out, da.decode_attention_ref(q, kc, vc, bt, ctx, 0.1), torch.float32)
    assert torch.all(out[0] == 0)


def test_get_ops_decode_kernel_choice():
    from engine.kernels import DECODE_KERNELS, get_ops

    assert get_ops("torch", "cpu", "tma").name == "torch"  # the torch backend has one decode path
    with pytest.raises(ValueError, match="decode kernel"):
        get_ops("torch", "cpu", "flash")
    assert "tma" in DECODE_KERNELS and "split" in DECODE_KERNELS


@needs_triton
@pytest.mark.parametrize("choice,default,expect", [("split", "tma", "split"), ("tma", "split", "tma"),
                                                   ("auto", "split", "split"), ("auto", "tma", "tma")])
def test_decode_kernel_dispatch(monkeypatch, choice, default, expect):
    """get_ops(decode_kernel=...) and the engine-wide default route to the named kernel, with the same result."""
    import engine.kernels as K

    calls = []
    for mod, name in ((da, "decode_attention"), (dt, "decode_attention_tma")):
        fn = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _fn=fn, _n=name, **kw: calls.append(_n) or _fn(*a, **kw))
    monkeypatch.setattr(K, "DEFAULT_DECODE_KERNEL", default)
    lens = [1, 17, 40]
    torch.manual_seed(4)
    kc, vc, bt, _, _ = make_paged_kv(lens, 2, 32, 16, torch.float32, DEV)
    q = torch.randn(3, 8, 32).to(DEV)
    ctx = torch.tensor(lens, dtype=torch.int32, device=DEV)
    ops = K.get_ops("triton", DEV, choice)
    assert (ops is K.TRITON_OPS) == (choice == "auto")
    out = ops.decode_attention(q, kc, vc, bt, ctx, 0.2, max_programs=3)
    assert calls == ["decode_attention" if expect == "split" else "decode_attention_tma"]
    assert_close(out, da.decode_attention_ref(q, kc, vc, bt, ctx, 0.2), torch.float32)


# ---- GPU, Llama-3-8B shapes ----


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("max_programs", [None, 44, 132])
def test_tma_and_fp8_decode_llama3_8b_shapes(fp8, max_programs):
    rng = random.Random(0)
    lens = [1, 15, 16, 17, 8192] + [rng.randint(1, 4096) for _ in range(27)]
    if fp8:
        q, kc, vc, bt, ks, vs = _fp8_case(lens, 32, 8, 128, torch.bfloat16, "cuda", seed=11)
        kw = {"k_scale": ks, "v_scale": vs}
    else:
        torch.manual_seed(11)
        kc, vc, bt, _, _ = make_paged_kv(lens, 8, 128, 16, torch.bfloat16, "cuda")
        q, kw = torch.randn(len(lens), 32, 128, device="cuda").to(torch.bfloat16), {}
    ctx = torch.tensor(lens, dtype=torch.int32, device="cuda")
    ref = da.decode_attention_ref(q, kc, vc, bt, ctx, 128**-0.5, **kw)
    for fn in (da.decode_attention, dt.decode_attention_tma):
        for splits in (None, 1, 8):
            out = torch.full_like(q, float("nan"))
            fn(q, kc, vc, bt, ctx, 128**-0.5, out=out, num_splits=splits, max_programs=max_programs, **kw)
            assert_close(out, ref, torch.bfloat16)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU interpreter check (a GPU machine runs the script itself; "
                                                      "triton 3.6's interpreter there lacks what the kernels use)")
def test_decode_tma_check_smoke(tmp_path):
    """The lead's one GPU call, run here on tiny shapes under the interpreter: every variant checks out."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "check.json"
    env = {**os.environ, "PYTHONPATH": str(root), "TRITON_INTERPRET": "1"}
    subprocess.run([sys.executable, str(root / "scripts" / "decode_tma_check.py"), "--smoke", "--out", str(out)],
                   check=True, env=env, capture_output=True, timeout=300)
    res = json.loads(out.read_text())
    assert res["environment"] and not res["errors"]
    names = {r["variant"] for r in res["rows"]}
    assert {"split", "split-fp8"} <= names and any(n.startswith("tma-") for n in names)
    assert all(r["ok"] for r in res["rows"])
