"""A decoder layer's ops as the engine runs them, on one GPU's shard of a model under tensor parallelism.

Shard shapes (Megatron-style, the way the engine will shard when it gets tensor parallelism): attention heads,
KV heads and the MLP's intermediate size are divided by TP (a model with fewer KV heads than GPUs keeps one KV
head per GPU, replicated); hidden size and vocabulary stay whole in the layer's shapes.

Each op has a kind (gemm / attention / memory) and its FLOPs and bytes as functions of its inputs, so a time
can be turned into achieved TFLOP/s and GB/s. Bytes are the compulsory traffic: every operand read once and
every result written once (what a perfect kernel moves); FLOPs of memory-bound ops are nominal (a few per
element) and only place them on the roofline.

Collectives: under TP > 1 a layer all-reduces twice (after o_proj and after down: the engine's o_allreduce and
down_allreduce plan ops). A profile of one GPU lists them but does not measure them (no peers to reduce with);
nanotune.profile.collectives times the all-reduce over real ranks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from engine.config import ModelConfig
from engine.errors import EngineConfigError
from engine.plan import GEMM_OPS, LAYER_OPS
from engine.sizing import ShardShapes, kv_bytes_per_token, shard_shapes

ATTENTION_OPS = ("decode_attn", "prefill_attn")
MEMORY_OPS = ("attn_norm", "mlp_norm", "rope_kv", "silu_mul")
KINDS = {**{op: "gemm" for op in GEMM_OPS}, **{op: "attention" for op in ATTENTION_OPS},
         **{op: "memory" for op in MEMORY_OPS}}
assert set(KINDS) == set(LAYER_OPS), "every engine op needs a kind here"

COLLECTIVES_NOT_MEASURED = ("not measured: this profile ran on one GPU with no peers to reduce with "
                            "(nanotune.profile.collectives times it over real ranks)")


@dataclass(frozen=True)
class Shard(ShardShapes):
    """One GPU's share of a model at a TP degree: the engine's ShardShapes (engine.sizing owns the sharding)
    with the model's name and its whole vocabulary, and the FLOPs/bytes views the profile and search read.
    num_layers is the full model's (each GPU runs every layer)."""

    model: str = ""
    vocab: int = 0

    @staticmethod
    def of(shapes: dict, model: str = "", tp: int = 1) -> Shard:
        """From a profile's `shapes` (already one GPU's; nanotune.profile.schema)."""
        v = {k: int(shapes[k]) for k in ("hidden", "heads", "kv_heads", "head_dim", "intermediate", "vocab",
                                         "num_layers", "params_per_gpu")}
        return Shard(tp=tp, rank=0, vocab_per_rank=-(-v["vocab"] // tp), model=model, **v)

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return kv_bytes_per_token(self.num_layers, self.kv_size, dtype_bytes)

    def gemm_nk(self, op: str) -> tuple[int, int]:
        """(n, k) of the op's weight [n, k]: output features x input features (nn.Linear layout)."""
        h, i = self.hidden, self.intermediate
        return {"qkv": (self.q_size + 2 * self.kv_size, h), "o_proj": (h, self.q_size),
                "gate_up": (2 * i, h), "down": (h, i)}[op]

    def to_dict(self) -> dict:
        """The profile's `shapes` (what `of` reads back): the layer's shapes, not the rank's place."""
        d = dataclasses.asdict(self)
        for k in ("model", "tp", "rank", "vocab_per_rank", "kv_head_lo"):
            d.pop(k)
        return d


def shard(cfg: ModelConfig, tp: int) -> Shard:
    """Per-GPU shapes of `cfg` at tensor-parallel degree `tp`; ValueError naming what does not divide."""
    try:
        s = shard_shapes(cfg, tp)  # the engine owns the sharding
    except EngineConfigError as e:
        raise ValueError(str(e).replace(f"tp {tp}", f"--tp {tp}")) from None
    return Shard(**dataclasses.asdict(s), model=cfg.name, vocab=cfg.vocab_size)


def shard_config(cfg: ModelConfig, s: Shard, num_layers: int) -> ModelConfig:
    """The engine ModelConfig of one GPU's shard with `num_layers` layers (the profile's rotation depth)."""
    return dataclasses.replace(cfg, num_layers=num_layers, num_heads=s.heads, num_kv_heads=s.kv_heads,
                               intermediate_size=s.intermediate)


# ---- FLOPs and bytes ------------------------------------------------------------------------------------
# `e` is the activation/weight element size in bytes (2 for bf16); `kv_e` the KV cache's (None: e; 1 for fp8,
# engine.config.kv_cache_dtype_bytes): attention reads K/V and rope_kv stores them at kv_e bytes each.

def gemm_cost(tokens: int, n: int, k: int, e: int = 2) -> tuple[float, float]:
    """[tokens, k] x [k, n]: 2 FLOPs per multiply-add; read input and weight, write output."""
    return 2.0 * tokens * n * k, float(e * (tokens * k + n * k + tokens * n))


def attention_flops(s: Shard, pairs: float) -> float:
    """QK^T and PV over `pairs` query-key pairs: 2 x 2 FLOPs per pair per query head per head dim."""
    return 4.0 * s.heads * s.head_dim * pairs


def decode_cost(s: Shard, batch: int, context: int, e: int = 2, block_size: int = 16,
                kv_e: int | None = None) -> tuple[float, float]:
    """`batch` sequences of `context` tokens each: QK^T and PV (2 x 2 FLOPs per key per query head per dim);
    K and V of every cached token read once per KV head (GQA shares them), q read, output written, and the
    int32 block table and context length."""
    tokens = batch * context
    flops = attention_flops(s, tokens)
    kv_e = e if kv_e is None else kv_e
    nbytes = kv_e * 2 * tokens * s.kv_size + e * 2 * batch * s.q_size + 4 * batch * (-(-context // block_size) + 1)
    return flops, float(nbytes)


def prefill_cost(s: Shard, tokens: int, context: int, seqs: int, e: int = 2,
                 block_size: int = 16, kv_e: int | None = None) -> tuple[float, float]:
    """`seqs` sequences, each a causal chunk of tokens/seqs new tokens after `context` cached ones: query i
    of a chunk of c sees context + i + 1 keys, so c * context + c (c + 1) / 2 query-key pairs per head."""
    c = tokens // seqs
    pairs = seqs * (c * context + c * (c + 1) / 2)
    flops = attention_flops(s, pairs)
    kv_tokens = seqs * (context + c)
    kv_e = e if kv_e is None else kv_e
    nbytes = (e * 2 * tokens * s.q_size + kv_e * 2 * kv_tokens * s.kv_size
              + 4 * seqs * (-(-(context + c) // block_size) + 2))
    return flops, float(nbytes)


def memory_cost(s: Shard, op: str, tokens: int, e: int = 2, kv_e: int | None = None) -> tuple[float, float]:
    """Bytes the op must move for `tokens` rows; FLOPs nominal (a few per element)."""
    n, h, i = tokens, s.hidden, s.intermediate
    if op in ("attn_norm", "mlp_norm"):  # layers >= 1: read delta + residual (+ weight), write normed + residual
        return 5.0 * n * h, float(e * (4 * n * h + h))
    if op == "silu_mul":  # read gate|up [n, 2I], write [n, I]
        return 5.0 * n * i, float(e * 3 * n * i)
    if op == "rope_kv":  # rotate q and k in place (read + write), fp32 cos|sin row and int64 position per
        rot = n * (s.q_size + s.kv_size)  # token; store k and v into the cache (read e, write kv_e) via int64
        kv_e = e if kv_e is None else kv_e  # slots
        return 3.0 * rot, float(e * (2 * rot + 2 * n * s.kv_size) + kv_e * 2 * n * s.kv_size
                                + n * (4 * s.head_dim + 16))
    raise KeyError(op)


def op_cost(s: Shard, op: str, point: dict, e: int = 2, block_size: int = 16,
            kv_e: int | None = None) -> tuple[float, float]:
    """(FLOPs, bytes) of `op` at a profile point ({tokens} | {batch, context} | {tokens, context, seqs})."""
    kind = KINDS[op]
    if kind == "gemm":
        return gemm_cost(point["tokens"], *s.gemm_nk(op), e=e)
    if op == "decode_attn":
        return decode_cost(s, point["batch"], point["context"], e=e, block_size=block_size, kv_e=kv_e)
    if op == "prefill_attn":
        return prefill_cost(s, point["tokens"], point["context"], point.get("seqs", 1), e=e,
                            block_size=block_size, kv_e=kv_e)
    return memory_cost(s, op, point["tokens"], e=e, kv_e=kv_e)


def op_shape(s: Shard, op: str) -> dict:
    """What the op's cost depends on besides its inputs (written beside its points in the profile)."""
    kind = KINDS[op]
    if kind == "gemm":
        n, k = s.gemm_nk(op)
        return {"n": n, "k": k}
    if kind == "attention":
        return {"heads": s.heads, "kv_heads": s.kv_heads, "head_dim": s.head_dim}
    width = {"attn_norm": s.hidden, "mlp_norm": s.hidden, "silu_mul": s.intermediate,
             "rope_kv": s.q_size + s.kv_size}[op]
    return {"width": width}


def layer_ops() -> list[tuple[str, str]]:
    """(op, kind) in the engine's dataflow order (engine.plan.LAYER_OPS)."""
    return [(op, KINDS[op]) for op in LAYER_OPS]


def collectives(s: Shard, e: int = 2) -> dict:
    """The layer's collectives at this TP degree (none at TP 1); listed, never measured (see module doc)."""
    if s.tp == 1:
        return {}
    return {"all_reduce": {"after": ["o_proj", "down"], "per_layer": 2, "bytes_per_token": e * s.hidden,
                           "ranks": s.tp, "measured": False, "why": COLLECTIVES_NOT_MEASURED}}
