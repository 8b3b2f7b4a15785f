"""Helpers shared by the kernel tests and scripts/kernel_check.py: paged-cache builders, float64 naive
attention, tolerances, and getting Triton kernels to run on a machine without a GPU (the interpreter).
"""

from __future__ import annotations

import importlib
import os

import torch

TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (1.6e-2, 1.6e-2), torch.float16: (2e-3, 2e-3)}


def triton_test_device() -> str | None:
    """Device to run Triton kernels on in tests: "cuda" if there is a GPU, else "cpu" under the interpreter.

    Returns None when triton is missing (or TRITON_INTERPRET was set to something else than 1 on a machine
    without a GPU). Triton picks interpreted-or-compiled when a function is decorated with @triton.jit, and
    its own library functions (tl.sum, tl.max, ...) are decorated when triton is first imported. In a pytest
    run, another test file may have imported triton (transformers' Llama does) or engine.kernels before this
    sets TRITON_INTERPRET=1; then triton.language and the kernel modules are reloaded here so that every
    jit function involved is an interpreted one.
    """
    if torch.cuda.is_available():
        return "cuda"
    os.environ.setdefault("TRITON_INTERPRET", "1")
    if os.environ["TRITON_INTERPRET"] != "1":
        return None
    try:
        import triton.language as tl
    except ImportError:
        return None
    if type(tl.sum).__name__ != "InterpretedFunction":  # triton was imported before the env var was set
        importlib.reload(importlib.import_module("triton.language.standard"))
        importlib.reload(importlib.import_module("triton.language"))
    from engine.kernels import _compat, decode_attention

    if not _compat.HAS_TRITON:  # engine.kernels imported before triton could be (cannot happen on Linux)
        return None
    if type(decode_attention._decode_kernel).__name__ != "InterpretedFunction":
        names = ["_compat", "store_kv", "norm", "activation", "rope", "decode_attention", "decode_attention_tma",
                 "prefill_attention"]
        for name in names:
            importlib.reload(importlib.import_module(f"engine.kernels.{name}"))
        importlib.reload(importlib.import_module("engine.kernels"))
    return "cpu"


def make_paged_kv(seq_lens, num_kv_heads, head_dim, block_size, dtype, device, *, spare_blocks=3, seed=None):
    """Random dense K/V per sequence, scattered into a paged cache through a shuffled block table.

    -> (k_cache, v_cache [NB, Hkv, BS, D], block_tables int32 [S, MB], dense_k, dense_v lists of [L, Hkv, D]).
    Block ids are a random permutation (non-contiguous, out of order); unused table entries point at random
    blocks and every unwritten cache slot holds NaN (like the engine's poison_kv_cache), so anything that
    reads past a context, even to multiply it by a zero probability, turns the result into NaN.
    Everything is drawn on `device` (GPU-sized caches build in milliseconds there).
    """
    gen = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    rand = lambda *shape: torch.randn(*shape, generator=gen, device=device).to(dtype)  # noqa: E731
    nblks = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(nblks) + spare_blocks
    shape = (num_blocks, num_kv_heads, block_size, head_dim)
    k_cache = torch.full(shape, float("nan"), dtype=dtype, device=device)
    v_cache = torch.full_like(k_cache, float("nan"))
    perm = torch.randperm(num_blocks, generator=gen, device=device)
    block_tables = torch.randint(0, num_blocks, (len(seq_lens), max(max(nblks), 1)), generator=gen,
                                 dtype=torch.int32, device=device)
    dense_k, dense_v, used = [], [], 0
    for s, (n, nb) in enumerate(zip(seq_lens, nblks, strict=True)):
        ids = perm[used:used + nb]
        used += nb
        block_tables[s, :nb] = ids.to(torch.int32)
        kd, vd = rand(n, num_kv_heads, head_dim), rand(n, num_kv_heads, head_dim)  # [L, Hkv, D]
        j = torch.arange(n, device=device)  # token j -> block ids[j // BS], offset j % BS
        k_cache[ids[j // block_size], :, j % block_size] = kd
        v_cache[ids[j // block_size], :, j % block_size] = vd
        dense_k.append(kd)
        dense_v.append(vd)
    return k_cache, v_cache, block_tables, dense_k, dense_v


def naive_attention_f64(q, k, v, q_positions, scale, window=0):
    """Dense causal attention in float64. q [Tq, H, D] at positions q_positions [Tq]; k, v [L, Hkv, D].
    window > 0: a query at p sees keys p - window < k <= p only."""
    num_heads, num_kv_heads = q.shape[1], k.shape[1]
    rep = num_heads // num_kv_heads
    kk = k.double().repeat_interleave(rep, dim=1)  # [L, H, D]
    vv = v.double().repeat_interleave(rep, dim=1)
    scores = torch.einsum("thd,lhd->htl", q.double(), kk) * scale
    key_pos, q_pos = torch.arange(k.shape[0], device=q.device)[None, :], q_positions[:, None].to(q.device)
    visible = key_pos <= q_pos
    if window > 0:
        visible &= key_pos > q_pos - window
    scores = scores.masked_fill(~visible[None], float("-inf"))
    return torch.einsum("htl,lhd->thd", torch.softmax(scores, dim=-1), vv)


def max_rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref| (NaN in out gives inf)."""
    out, ref = out.double(), ref.double()
    if torch.isnan(out).any():
        return float("inf")
    return float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype | None = None) -> None:
    """Dtype-aware check; NaN (an unwritten, poisoned element) always fails."""
    assert not torch.isnan(out).any(), "output has NaN: unwritten (poisoned) elements"
    rtol, atol = TOLERANCES[dtype or out.dtype]
    torch.testing.assert_close(out.double(), ref.double().to(out.device), rtol=rtol, atol=atol)
