"""KV-cache capacity and the steady-state batch a workload reaches: the batch composition the performance
model is asked about, and so the throughput a plan and a dense-batch size give.

Capacity follows the engine's own sizing (engine/runner.py `_allocate_kv_cache`): the cache gets
gpu_memory_fraction of the card less the weights, the activation workspace, the sampling reserve and the
CUDA context. Calibrated on an H200 with llama-3-8b: 55,243 blocks measured, 55,233 predicted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.sizing import (
    DEFAULT_MAX_NUM_BATCHED_TOKENS,
    DEFAULT_MAX_NUM_SEQS,
    kv_blocks_that_fit,
    sampling_reserve_bytes,
    workspace_bytes,
    workspace_rows,
)
from nanotune.errors import UserError
from nanotune.profile.ops import Shard
from nanotune.search.perfmodel import BatchShape

GIB = 1 << 30
# Usable memory (torch's total_memory) of cards by name; first match wins, so specific names come first.
GPU_MEMORY_GIB = [("h200", 139.8), ("h100 nvl", 93.1), ("h100", 79.1), ("gh200", 94.5), ("b200", 178.4),
                  ("a100-sxm4-40", 39.4), ("a100 40", 39.4), ("a100-40", 39.4), ("a100", 79.1),
                  ("l40s", 44.4), ("l40", 44.4), ("a10g", 22.0), ("l4", 22.0), ("rtx 4090", 23.6)]
CUDA_CONTEXT_BYTES = GIB  # context, cuBLAS workspaces, the rope table: what `total - free` holds beside ours


def gpu_memory_gib(name: str, profile_gpu: dict | None = None) -> float:
    """The card's memory: from the profile when it recorded it, else by name; one-line error if unknown."""
    g = profile_gpu or {}
    if g.get("memory_gib"):
        return float(g["memory_gib"])
    if g.get("memory_bytes"):
        return float(g["memory_bytes"]) / GIB
    low = name.lower()
    for key, gib in GPU_MEMORY_GIB:
        if key in low:
            return gib
    raise UserError(f"GPU '{name}': memory size unknown; give --gpu-memory-gib")


@dataclass(frozen=True)
class KVCapacity:
    num_blocks: int
    block_size: int
    budget_bytes: float
    weights_bytes: float
    workspace_bytes: float
    reserve_bytes: float

    @property
    def num_tokens(self) -> int:
        return self.num_blocks * self.block_size


def kv_capacity(shards: Shard, memory_gib: float, gpu_memory_fraction: float = 0.9,
                max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS,
                max_num_seqs: int = DEFAULT_MAX_NUM_SEQS, block_size: int = 16,
                dtype_bytes: int = 2, kv_dtype_bytes: int | None = None) -> KVCapacity:
    """Blocks of KV cache one GPU holds (num_blocks <= 0: the model does not fit). dtype_bytes: weights and
    activations; kv_dtype_bytes: per K/V element of the cache (None: dtype_bytes; fp8: 1)."""
    s = shards
    weights = s.params_per_gpu * dtype_bytes
    rows = workspace_rows(max_num_batched_tokens, max_num_seqs)
    workspace = workspace_bytes(s.hidden, s.q_size, s.kv_size, s.intermediate, rows, dtype_bytes)
    reserve = sampling_reserve_bytes(max_num_seqs, s.vocab) + CUDA_CONTEXT_BYTES
    budget = gpu_memory_fraction * memory_gib * GIB - weights - workspace - reserve
    kv_e = dtype_bytes if kv_dtype_bytes is None else kv_dtype_bytes
    blocks = kv_blocks_that_fit(budget, s.num_layers, s.kv_size, block_size, kv_e)
    return KVCapacity(blocks, block_size, budget, weights, workspace, reserve)


@dataclass(frozen=True)
class WorkloadStats:
    """What the steady state needs from a workload's lengths."""

    num_requests: int
    mean_prompt: float
    mean_output: float
    decode_context: float  # mean KV length of a running decode sequence, weighted by how long it decodes
    prefill_attended: float  # mean keys a prompt token attends (its position), over all prompt tokens
    max_total: int

    @staticmethod
    def of(prompt_lens, output_lens) -> WorkloadStats:
        p = np.asarray(prompt_lens, dtype=float)
        o = np.asarray(output_lens, dtype=float)
        if p.size == 0:
            raise UserError("workload has no requests")
        steps = np.maximum(o - 1, 0)  # the first output token comes with the prefill
        # a request decoding step j (1..steps) attends p + j keys; over its steps the mean is p + (steps + 1) / 2
        w = steps.sum()
        ctx = float((steps * (p + (steps + 1) / 2)).sum() / w) if w > 0 else float(p.mean())
        attended = float(((p * (p + 1) / 2).sum()) / p.sum())  # token at position i (1-based) attends i keys
        return WorkloadStats(int(p.size), float(p.mean()), float(o.mean()), ctx, attended, int((p + o).max()))

    @property
    def mean_decode_steps(self) -> float:
        return max(self.mean_output - 1.0, 0.0)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class SteadyState:
    batch: BatchShape
    limit: str  # what caps the decode batch: "tokens" (dense batch), "seqs" (max_num_seqs) or "kv"
    completions_per_iteration: float

    def total_tokens_per_s(self, stats: WorkloadStats, iteration_ms: float) -> float:
        """vLLM's total_token_throughput in steady state: requests completed per second x (prompt + output)."""
        if iteration_ms <= 0:
            return 0.0
        return self.completions_per_iteration * (stats.mean_prompt + stats.mean_output) * 1e3 / iteration_ms


def steady_state(stats: WorkloadStats, max_num_batched_tokens: int, max_num_seqs: int,
                 kv_tokens: float, block_size: int = 16) -> SteadyState:
    """The batch the scheduler settles into with an endless supply of such requests.

    In steady state requests finish as fast as they are admitted, so per iteration the prefill tokens are
    the decode tokens x mean prompt / mean decode steps. The decode batch d is the smallest of: the
    dense-batch budget T / (1 + prompt / steps); max_num_seqs; and the requests the KV cache holds, each
    holding its mean decode context (+ half a block of rounding). The admission check predicts each
    request's peak, so with synchronized (constant-length) requests the real KV limit is lower: a finite
    offline run is better predicted by replaying the scheduler (nanotune.search.replay).
    """
    steps = stats.mean_decode_steps
    if steps <= 0:  # prompt-only requests: every iteration is prefill
        p = float(max_num_batched_tokens)
        return SteadyState(BatchShape(0.0, 0.0, p, stats.prefill_attended, p / max(stats.mean_prompt, 1)),
                           "tokens", p / max(stats.mean_prompt, 1.0))
    ratio = stats.mean_prompt / steps
    held = stats.decode_context + block_size / 2
    caps = {"tokens": max_num_batched_tokens / (1 + ratio), "seqs": float(max_num_seqs),
            "kv": max(kv_tokens, 0.0) / held}
    limit = min(caps, key=caps.get)
    d = caps[limit]
    completions = d / steps
    return SteadyState(BatchShape(d, stats.decode_context, d * ratio, stats.prefill_attended, d + completions),
                       limit, completions)
