"""Scales of an fp8 (e4m3) KV cache, per (layer, kv head), from the weights alone: no calibration data.

A stored K element is k / k_scale. k = W_k (g * x / rms(x)) (+ bias), then rotated by rope. With x / rms(x)
of L2 norm sqrt(hidden), Cauchy-Schwarz bounds every element of kv head h by
    B_h = max over h's rows r of ||W_k[r] * g||_2 * sqrt(hidden) + max |bias_h|,
and rope mixes element pairs (i, i + D/2) by a rotation, so |rotated element| <= sqrt(2) B_h. The scale maps
that bound onto e4m3's largest value, 448: nothing can saturate. Values of typical size then sit about
sqrt(hidden) below the top of the range, far above e4m3's normal floor (2^-6, 2^14.8 below 448), where the
relative precision (3 mantissa bits) does not depend on the scale. Scale 1 instead would put the K/V of
models with small activations into e4m3's subnormals.
"""

from __future__ import annotations

import math

import torch

from engine.config import ModelConfig
from engine.models.weights import ModelWeights

E4M3_MAX = 448.0


def kv_scales_from_weights(cfg: ModelConfig, weights: ModelWeights) -> torch.Tensor:
    """-> fp32 [num_layers, 2 (K, V), num_kv_heads] on the weights' device."""
    q, kv, d = cfg.q_size, cfg.kv_size, cfg.head_dim
    out = []
    for w in weights.layers:
        wg = w.qkv.float() * w.attn_norm.float()[None, :]  # [q + 2 kv, h]: rows scaled by the norm weight
        row_norm = wg.norm(dim=1) * math.sqrt(cfg.hidden_size)  # bound of each output element
        if w.qkv_bias is not None:
            row_norm = row_norm + w.qkv_bias.float().abs()
        k = row_norm[q:q + kv].view(cfg.num_kv_heads, d).amax(dim=1) * math.sqrt(2.0)  # rope rotates pairs
        v = row_norm[q + kv:].view(cfg.num_kv_heads, d).amax(dim=1)
        out.append(torch.stack([k, v]))
    return (torch.stack(out) / E4M3_MAX).clamp_min(1e-12)
