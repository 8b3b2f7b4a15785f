"""The engine's kernels: each op as a Triton kernel and as its torch reference (also the CPU path).

    ops = get_ops("auto", device)      # triton on CUDA when triton imports, torch otherwise
    ops.rms_norm(x, w, eps); ops.decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale)

Tensor conventions (fixed for the model code):
  k_cache, v_cache  [num_blocks, num_kv_heads, block_size, head_dim] per layer, contiguous
  block_tables      int32 [num_seqs, max_blocks_per_seq]; context_lens / seq_lens int32 [num_seqs]
  slot_mapping      int64 [num_tokens], slot < 0 = skip
  cos_sin_cache     fp32 [max_position, head_dim] = cos | sin
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import torch

from engine.kernels import (
    activation,
    decode_attention,
    decode_attention_tma,
    norm,
    prefill_attention,
    rope,
    store_kv,
)
from engine.kernels._compat import HAS_TRITON
from engine.kernels.rope import build_cos_sin_cache, rope_inv_freq


@dataclass(frozen=True)
class KernelOps:
    """One backend's implementation of every op; the model code calls only these attributes."""

    name: str
    store_kv: Callable
    decode_attention: Callable
    prefill_attention: Callable
    rms_norm: Callable
    add_rms_norm: Callable
    silu_and_mul: Callable
    apply_rope: Callable


TORCH_OPS = KernelOps(
    name="torch",
    store_kv=store_kv.store_kv_ref,
    decode_attention=decode_attention.decode_attention_ref,
    prefill_attention=prefill_attention.prefill_attention_ref,
    rms_norm=norm.rms_norm_ref,
    add_rms_norm=norm.add_rms_norm_ref,
    silu_and_mul=activation.silu_and_mul_ref,
    apply_rope=rope.apply_rope_ref,
)

# Triton decode attention: "split" = decode_attention.py (pointer gathers, any GPU), "tma" =
# decode_attention_tma.py (tensor descriptors, sm >= 90). "auto" = DEFAULT_DECODE_KERNEL where it runs.
DECODE_KERNELS = ("auto", "split", "tma")
DEFAULT_DECODE_KERNEL = "split"  # chosen from scripts/decode_tma_check.py on an H200


def _decode(kind: str, q, k_cache, v_cache, *args, config=None, window: int = 0, **kw):
    """The `kind` kernel ("split" | "tma"); TMA only where it runs (sm >= 90, pages of >= 16 tokens, no sliding
    window: the TMA kernel walks whole contexts), else the split kernel: the same result. A config object
    picks its own kernel."""
    use_tma = isinstance(config, decode_attention_tma.TmaDecodeConfig) or (
        kind == "tma" and not isinstance(config, decode_attention.DecodeConfig))
    if use_tma and not window and decode_attention_tma.is_supported(q, k_cache):
        return decode_attention_tma.decode_attention_tma(q, k_cache, v_cache, *args, config=config, **kw)
    if isinstance(config, decode_attention_tma.TmaDecodeConfig):
        config = None
    return decode_attention.decode_attention(q, k_cache, v_cache, *args, config=config, window=window, **kw)


def decode_attention_auto(*args, **kw):
    return _decode(DEFAULT_DECODE_KERNEL, *args, **kw)


TRITON_OPS = KernelOps(
    name="triton",
    store_kv=store_kv.store_kv,
    decode_attention=decode_attention_auto,
    prefill_attention=prefill_attention.prefill_attention,
    rms_norm=norm.rms_norm,
    add_rms_norm=norm.add_rms_norm,
    silu_and_mul=activation.silu_and_mul,
    apply_rope=rope.apply_rope,
)
DECODE_OPS = {
    "split": replace(TRITON_OPS, name="triton-split", decode_attention=partial(_decode, "split")),
    "tma": replace(TRITON_OPS, name="triton-tma", decode_attention=partial(_decode, "tma")),
}

BACKENDS = ("auto", "torch", "triton")


def get_ops(backend: str = "auto", device: torch.device | str | None = None,
            decode_kernel: str = "auto") -> KernelOps:
    """backend "torch" | "triton" | "auto" (triton for a CUDA device when triton imports, else torch);
    decode_kernel one of DECODE_KERNELS (the triton backend's decode attention; "auto" = TRITON_OPS)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if decode_kernel not in DECODE_KERNELS:
        raise ValueError(f"unknown decode kernel {decode_kernel!r}; choose one of {', '.join(DECODE_KERNELS)}")
    if backend == "auto":
        is_cuda = device is not None and torch.device(device).type == "cuda"
        backend = "triton" if is_cuda and HAS_TRITON else "torch"
    if backend == "triton" and not HAS_TRITON:
        raise RuntimeError("kernel backend 'triton' needs the triton package (Linux)")
    if backend == "torch":
        return TORCH_OPS
    if decode_kernel == "auto":
        return TRITON_OPS
    dev = torch.device(device) if device is not None else None
    if decode_kernel == "tma" and dev is not None and dev.type == "cuda" \
            and torch.cuda.get_device_capability(dev)[0] < 9:
        raise ValueError("decode kernel 'tma' needs a GPU with TMA (sm >= 90); use 'split' or 'auto'")
    return DECODE_OPS[decode_kernel]


__all__ = ["BACKENDS", "DECODE_KERNELS", "DEFAULT_DECODE_KERNEL", "HAS_TRITON", "KernelOps", "TORCH_OPS",
           "TRITON_OPS", "build_cos_sin_cache", "get_ops", "rope_inv_freq"]
