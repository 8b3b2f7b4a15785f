"""The engine's sizing facts, torch-free: shard shapes per tensor-parallel rank, weight and workspace bytes,
KV bytes per token, the KV blocks that fit, and the scheduler defaults. The runner sizes itself with these;
profile, search, bench and the scripts import them instead of repeating the formulas.

Sharding (Megatron style): attention heads, KV heads and the MLP's intermediate size are divided by TP (a model
with fewer KV heads than ranks keeps one KV head per rank, rank r holding KV head r // (TP / num_kv_heads));
the vocabulary is split into TP equal slices (the last padded) for the embedding and lm_head; norms and the
hidden size stay whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.errors import EngineConfigError

if TYPE_CHECKING:  # engine.config imports this module's defaults
    from engine.config import ModelConfig

GIB = 1 << 30
DEFAULT_MAX_NUM_BATCHED_TOKENS = 2048  # EngineConfig.max_num_batched_tokens: the dense-batch token budget
DEFAULT_MAX_NUM_SEQS = 512  # EngineConfig.max_num_seqs
# A mixed CUDA-graph bucket pads its decode rows up to a multiple of this (engine/mixed_graphs.py), and the
# scheduler leaves that padding out of the prefill budget, so a full batch keeps one bucket, not one per count
DECODE_ROW_ALIGN = 32
# The default max_model_len: the model's max_position, capped here. The KV block table and the rope cache are
# sized by max_model_len, so a model trained to 128k positions would otherwise reserve per-sequence tables for
# contexts no benchmark uses.
MAX_MODEL_LEN_CAP = 8192
SAMPLING_RESERVE_BYTES = GIB  # beside 3 x max_num_seqs x vocab fp32 sampling temporaries: cuBLAS/graph pools
SAMPLING_COPIES = 3  # [seqs, vocab] fp32 copies the sampler may hold at once
USEFUL_KV_SEQS = 16  # a "useful" KV cache holds this many sequences of the default max_model_len


def default_max_model_len(cfg: ModelConfig) -> int:
    return min(cfg.max_position, MAX_MODEL_LEN_CAP)


def resolve_max_model_len(cfg: ModelConfig, requested: int | None = None) -> int:
    """The context the engine serves: `requested`, else default_max_model_len. The tools that drop over-long
    requests before a run read the figure the engine uses through this."""
    if requested is None:
        return default_max_model_len(cfg)
    if requested > cfg.max_position:
        raise EngineConfigError(f"max_model_len {requested} exceeds the model's max_position {cfg.max_position}")
    return requested


def check_tp(cfg: ModelConfig, tp: int) -> None:
    """EngineConfigError (one line) unless `cfg` shards evenly over `tp` ranks."""
    if tp < 1:
        raise EngineConfigError(f"tp {tp}: must be >= 1")
    for what, n in (("attention heads", cfg.num_heads), ("intermediate size", cfg.intermediate_size)):
        if n % tp:
            raise EngineConfigError(f"{cfg.name}: {what} {n} do not divide over tp {tp}")
    for field in ("o_bias", "mlp_bias"):  # a row-parallel layer's bias must be added once, after the all-reduce
        if tp > 1 and getattr(cfg, field, False):
            raise EngineConfigError(f"{cfg.name}: field '{field}' = true is not implemented under tensor "
                                    f"parallelism (tp {tp}); run it at tp 1")
    if cfg.num_kv_heads % tp and tp % cfg.num_kv_heads:
        raise EngineConfigError(f"{cfg.name}: {cfg.num_kv_heads} KV heads neither divide over nor replicate "
                                f"evenly to tp {tp}")


@dataclass(frozen=True)
class ShardShapes:
    """One rank's shapes: rank r holds query heads [r * heads, (r + 1) * heads)."""

    tp: int
    rank: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab_per_rank: int  # ceil(vocab / tp): rank r holds rows [r * vocab_per_rank, (r + 1) * vocab_per_rank)
    head_dim: int
    hidden: int
    num_layers: int
    params_per_gpu: int
    kv_head_lo: int = 0  # the first (full-model) KV head this rank holds

    @property
    def q_size(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def vocab_lo(self) -> int:
        return self.rank * self.vocab_per_rank


def shard_shapes(cfg: ModelConfig, tp: int, rank: int = 0) -> ShardShapes:
    check_tp(cfg, tp)
    heads, inter = cfg.num_heads // tp, cfg.intermediate_size // tp
    kv_heads = max(1, cfg.num_kv_heads // tp)
    h, d = cfg.hidden_size, cfg.head_dim
    per_layer = h * (heads + 2 * kv_heads) * d + heads * d * h + 3 * h * inter + 2 * h
    if cfg.qkv_bias:
        per_layer += (heads + 2 * kv_heads) * d
    # embedding and lm_head split by vocabulary (vocab-parallel); tied: one matrix
    embed = cfg.vocab_size * h * (1 if cfg.tie_word_embeddings else 2) // tp
    return ShardShapes(tp=tp, rank=rank, heads=heads, kv_heads=kv_heads, intermediate=inter,
                       vocab_per_rank=-(-cfg.vocab_size // tp), head_dim=d, hidden=h, num_layers=cfg.num_layers,
                       params_per_gpu=cfg.num_layers * per_layer + embed + h,
                       kv_head_lo=rank * kv_heads if tp <= cfg.num_kv_heads else rank // (tp // cfg.num_kv_heads))


def weights_bytes(cfg: ModelConfig, tp: int = 1, dtype_bytes: int = 2) -> int:
    return shard_shapes(cfg, tp).params_per_gpu * dtype_bytes


def workspace_bytes(hidden: int, q_size: int, kv_size: int, intermediate: int, rows: int,
                    dtype_bytes: int = 2) -> int:
    """The engine Workspace (engine/models/llama.py): residual, normed, delta (hidden each), qkv, attention out,
    gate_up (2 I) and act (I), `rows` rows each."""
    return rows * (3 * hidden + q_size + 2 * kv_size + q_size + 3 * intermediate) * dtype_bytes


def workspace_rows(max_num_batched_tokens: int, max_num_seqs: int) -> int:
    return max(max_num_batched_tokens, max_num_seqs)


def kv_bytes_per_token(num_layers: int, kv_size: int, dtype_bytes: int = 2) -> int:
    """K and V of one token over all layers, on one rank (kv_size = the rank's KV heads x head_dim)."""
    return 2 * num_layers * kv_size * dtype_bytes


def sampling_reserve_bytes(max_num_seqs: int, vocab: int) -> int:
    return SAMPLING_COPIES * max_num_seqs * vocab * 4 + SAMPLING_RESERVE_BYTES


def kv_blocks_that_fit(budget_bytes: float, num_layers: int, kv_size: int, block_size: int,
                       dtype_bytes: int = 2) -> int:
    """Blocks of `block_size` tokens that `budget_bytes` holds (<= 0: none fit)."""
    return int(budget_bytes // (kv_bytes_per_token(num_layers, kv_size, dtype_bytes) * block_size))


def min_tp_that_fits(cfg: ModelConfig, memory_bytes: float, fraction: float = 0.9, min_kv_tokens: int = 0,
                     max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS,
                     max_num_seqs: int = DEFAULT_MAX_NUM_SEQS, dtype_bytes: int = 2,
                     context_bytes: int = GIB, candidates=(1, 2, 4, 8, 16)) -> int | None:
    """The smallest TP (of `candidates`, dividing the model) whose shard leaves room for min_kv_tokens of KV
    cache on a card of `memory_bytes`; None when none does."""
    for tp in candidates:
        try:
            s = shard_shapes(cfg, tp)
        except EngineConfigError:
            continue
        rows = workspace_rows(max_num_batched_tokens, max_num_seqs)
        left = (fraction * memory_bytes - s.params_per_gpu * dtype_bytes - context_bytes
                - workspace_bytes(s.hidden, s.q_size, s.kv_size, s.intermediate, rows, dtype_bytes)
                - sampling_reserve_bytes(max_num_seqs, cfg.vocab_size))
        if left >= max(1, min_kv_tokens) * kv_bytes_per_token(s.num_layers, s.kv_size, dtype_bytes):
            return tp
    return None
