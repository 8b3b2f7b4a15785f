"""KV store, RMSNorm (+residual), SiLU-mul and rope: Triton kernels (TRITON_INTERPRET=1 on CPU) against
their torch references, the references against plain definitions and against Hugging Face transformers.
"""

import pytest
import torch

import engine.kernels as K
from engine.kernels import activation, norm, rope, store_kv
from engine.kernels.testing import assert_close, triton_test_device

DEV = triton_test_device()
needs_triton = pytest.mark.skipif(DEV is None, reason="triton is not installed")
DTYPES = [torch.float32, torch.bfloat16]


def _assert_matches_ref(out, ref, dtype):
    """Tolerance check, and for bf16 the same roundings as the reference: almost every element bit-equal
    (a 1-ulp flip can come from exp/rsqrt differing in their last fp32 bit between libraries)."""
    assert_close(out, ref, dtype)
    if dtype == torch.bfloat16:
        assert (out != ref).double().mean() < 0.01


def _cache(num_blocks, num_kv_heads, block_size, head_dim, dtype, device):
    return torch.full(
        (num_blocks, num_kv_heads, block_size, head_dim), float("nan"), dtype=dtype, device=device
    )


def test_store_kv_ref_matches_loop():
    k, v = torch.randn(2, 6, 3, 8).unbind(0)
    slots = torch.tensor([5, -1, 0, 17, 31, -1])
    kc, vc = _cache(2, 3, 16, 8, torch.float32, "cpu"), _cache(2, 3, 16, 8, torch.float32, "cpu")
    store_kv.store_kv_ref(k, v, kc, vc, slots)
    expect = _cache(2, 3, 16, 8, torch.float32, "cpu")
    for t, s in enumerate(slots.tolist()):
        if s >= 0:
            expect[s // 16, :, s % 16] = k[t]
    torch.testing.assert_close(kc, expect, equal_nan=True)  # skipped slots leave the cache untouched


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_kv_heads,head_dim,block_size", [(2, 64, 16), (3, 128, 32), (8, 64, 16)])
def test_store_kv_triton(dtype, num_kv_heads, head_dim, block_size):
    num_blocks, num_tokens = 6, 20
    slots = torch.randperm(num_blocks * block_size)[:num_tokens]
    slots[::5] = -1  # padding tokens: skipped
    k = torch.randn(num_tokens, num_kv_heads, head_dim).to(dtype).to(DEV)
    v = torch.randn(num_tokens, num_kv_heads, head_dim).to(dtype).to(DEV)
    caches = [_cache(num_blocks, num_kv_heads, block_size, head_dim, dtype, DEV) for _ in range(4)]
    store_kv.store_kv_ref(k, v, caches[0], caches[1], slots.to(DEV))
    store_kv.store_kv(k, v, caches[2], caches[3], slots.to(DEV))
    assert torch.equal(caches[0].isnan(), caches[2].isnan())  # same slots written, the others untouched
    torch.testing.assert_close(caches[2], caches[0], equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(caches[3], caches[1], equal_nan=True, rtol=0, atol=0)


def _hf_rms_norm(x, weight, eps):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    mod = LlamaRMSNorm(x.shape[-1], eps=eps).to(x.dtype)
    mod.weight.data.copy_(weight)
    return mod(x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_ref_matches_hf(dtype):
    pytest.importorskip("transformers")
    x, r = (torch.randn(2, 5, 96) * 3).to(dtype).unbind(0)
    w = (1 + torch.randn(96) * 0.1).to(dtype)
    assert torch.equal(norm.rms_norm_ref(x, w, 1e-5), _hf_rms_norm(x, w, 1e-5))
    normed, res = norm.add_rms_norm_ref(x, r, w, 1e-5)
    assert torch.equal(res, x + r) and torch.equal(normed, _hf_rms_norm(x + r, w, 1e-5))


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [64, 96, 4096])
def test_rms_norm_triton(dtype, hidden):
    x, r = (torch.randn(2, 7, hidden) * 2).to(dtype).to(DEV).unbind(0)
    w = (1 + torch.randn(hidden) * 0.1).to(dtype).to(DEV)
    _assert_matches_ref(norm.rms_norm(x, w, 1e-6), norm.rms_norm_ref(x, w, 1e-6), dtype)
    normed, res = norm.add_rms_norm(x, r, w, 1e-6)
    ref_normed, ref_res = norm.add_rms_norm_ref(x, r, w, 1e-6)
    assert torch.equal(res, ref_res)  # one rounding of an fp32 sum: bit-exact
    _assert_matches_ref(normed, ref_normed, dtype)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_ranks,hidden", [(2, 64), (4, 96), (2, 4096)])
def test_peer_sum_add_rms_norm_reads_every_ranks_rows(dtype, num_ranks, hidden):
    """The fused all-reduce + residual add + RMSNorm kernel, with local tensors standing for the ranks'
    symmetric buffers (their addresses are what it reads through): the sum in rank order, then add_rms_norm."""
    rows = 7
    parts = [(torch.randn(rows, hidden) * 2).to(dtype).to(DEV) for _ in range(num_ranks)]
    r = (torch.randn(rows, hidden) * 2).to(dtype).to(DEV)
    w = (1 + torch.randn(hidden) * 0.1).to(dtype).to(DEV)
    peers = torch.tensor([p.data_ptr() for p in parts], dtype=torch.int64, device=DEV)
    residual = r.clone()
    normed = torch.empty_like(r)
    norm.peer_sum_add_rms_norm(peers, parts[1], residual, w, 1e-6, out=normed, residual_out=residual)
    ref_normed, ref_res = norm.peer_sum_add_rms_norm_ref(parts, r, w, 1e-6)
    assert torch.equal(residual, ref_res)  # roundings of exact fp32 sums: bit-exact
    _assert_matches_ref(normed, ref_normed, dtype)
    plain = norm.add_rms_norm_ref(sum(p.float() for p in parts).to(dtype), r, w, 1e-6)[1]
    assert torch.equal(ref_res, plain)  # the reference is add_rms_norm of the all-reduced rows


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul_ref_matches_hf_mlp_order(dtype):
    x = torch.randn(5, 2 * 48).to(dtype)
    gate, up = x[:, :48], x[:, 48:]
    assert torch.equal(activation.silu_and_mul_ref(x), torch.nn.SiLU()(gate) * up)
    expect = gate.double() * torch.sigmoid(gate.double()) * up.double()
    assert_close(activation.silu_and_mul_ref(x), expect, dtype)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inter", [48, 1500])
def test_silu_and_mul_triton(dtype, inter):
    x = (torch.randn(3, 2 * inter) * 3).to(dtype).to(DEV)
    _assert_matches_ref(activation.silu_and_mul(x), activation.silu_and_mul_ref(x), dtype)


ROPE_CASES = [
    {"rope_type": "default"},
    {"rope_type": "linear", "factor": 4.0},
    {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
]


@pytest.mark.parametrize("scaling", ROPE_CASES, ids=lambda s: s["rope_type"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_cos_sin_cache_matches_hf(scaling, head_dim):
    pytest.importorskip("transformers")
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    theta = 500000.0
    config = LlamaConfig(
        hidden_size=head_dim * 4,
        num_attention_heads=4,
        max_position_embeddings=16384,
        rope_parameters={"rope_theta": theta, **scaling},
    )
    hf = LlamaRotaryEmbedding(config)
    torch.testing.assert_close(rope.rope_inv_freq(head_dim, theta, scaling), hf.inv_freq, rtol=0, atol=0)
    pos = torch.tensor([[0, 1, 7, 1000, 8191, 16000]])
    cos, sin = hf(torch.zeros(1, dtype=torch.float32), pos)  # [1, P, D] fp32
    cache = K.build_cos_sin_cache(head_dim, 16384, theta, scaling)
    half = head_dim // 2
    torch.testing.assert_close(cache[pos[0], :half], cos[0, :, :half], rtol=0, atol=0)
    torch.testing.assert_close(cache[pos[0], half:], sin[0, :, :half], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_apply_rope_ref_matches_hf(dtype):
    pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    cache = K.build_cos_sin_cache(64, 4096, 10000.0)
    q, k = torch.randn(7, 4, 64).to(dtype), torch.randn(7, 2, 64).to(dtype)
    pos = torch.tensor([0, 1, 2, 100, 2000, 4095, 3])
    cos = torch.cat([cache[pos, :32]] * 2, dim=-1).to(
        dtype
    )  # HF's cos/sin [T, D], cast to the activation dtype
    sin = torch.cat([cache[pos, 32:]] * 2, dim=-1).to(dtype)
    # HF layout [B, H, T, D]
    q_hf, k_hf = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos[None], sin[None])
    q2, k2 = q.clone(), k.clone()
    rope.apply_rope_ref(q2, k2, pos, cache)
    assert torch.equal(q2, q_hf[0].transpose(0, 1)) and torch.equal(k2, k_hf[0].transpose(0, 1))


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(4, 2, 64), (6, 3, 128), (8, 1, 32)])
def test_apply_rope_triton(dtype, num_heads, num_kv_heads, head_dim):
    cache = K.build_cos_sin_cache(head_dim, 512, 10000.0, device=DEV)
    # q and k as strided views of one fused qkv tensor, the way the model code slices them
    qkv = torch.randn(9, num_heads + 2 * num_kv_heads, head_dim).to(dtype).to(DEV)
    pos = torch.randint(0, 512, (9,), device=DEV)
    q, k = qkv[:, :num_heads], qkv[:, num_heads : num_heads + num_kv_heads]
    q_ref, k_ref = q.clone(), k.clone()
    v_before = qkv[:, num_heads + num_kv_heads :].clone()
    rope.apply_rope_ref(q_ref, k_ref, pos, cache)
    rope.apply_rope(q, k, pos, cache)
    assert_close(q, q_ref, dtype)
    assert_close(k, k_ref, dtype)
    if dtype == torch.bfloat16:  # no transcendental in the kernel: every rounding is the reference's
        assert torch.equal(q, q_ref) and torch.equal(k, k_ref)
    assert torch.equal(qkv[:, num_heads + num_kv_heads :], v_before)  # v untouched


def test_get_ops_backends():
    assert K.get_ops("auto", "cpu") is K.TORCH_OPS and K.get_ops("torch") is K.TORCH_OPS
    if K.HAS_TRITON:
        assert K.get_ops("triton") is K.TRITON_OPS
        assert K.get_ops("auto", "cuda").name == "triton"
    with pytest.raises(ValueError, match="unknown kernel backend"):
        K.get_ops("cuda")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_out_arguments_and_in_place_residual(backend):
    # the engine writes into preallocated workspaces and updates the residual stream in place
    if backend == "triton" and DEV is None:
        pytest.skip("triton is not installed")
    ops = K.get_ops(backend)
    dev = DEV if backend == "triton" else "cpu"
    x, r = torch.randn(2, 6, 64, device=dev).unbind(0)
    w = torch.randn(64, device=dev)
    expect_normed, expect_res = norm.add_rms_norm_ref(x, r, w, 1e-6)
    out, res = torch.full_like(x, float("nan")), r.clone()
    normed, res_out = ops.add_rms_norm(x, res, w, 1e-6, out=out, residual_out=res)
    assert normed is out and res_out is res
    assert_close(out, expect_normed) and assert_close(res, expect_res)
    out2 = torch.full_like(x, float("nan"))
    assert ops.rms_norm(x, w, 1e-6, out=out2) is out2
    assert_close(out2, norm.rms_norm_ref(x, w, 1e-6))
    gu = torch.randn(6, 2 * 40, device=dev)
    act = torch.full((6, 40), float("nan"), device=dev)
    assert ops.silu_and_mul(gu, out=act) is act
    assert_close(act, activation.silu_and_mul_ref(gu))
