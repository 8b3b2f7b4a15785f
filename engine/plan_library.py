"""Hand-written plans: the sequential plan and NanoFlow-style nano-batch overlap, as data.

`search` writes tuned plans; these are the defaults until it has. A plan is produced here from a few
parameters and returned as a PipelinePlan (saveable JSON): nothing here is executable code of its own.
"""

from __future__ import annotations

from engine.config import ModelConfig
from engine.plan import OpInstance, PipelinePlan

PRE_ATTN = ("attn_norm", "qkv", "rope_kv")
POST_ATTN = ("o_proj", "mlp_norm", "gate_up", "silu_mul", "down")


def nano_batch_plan(num_nano_batches: int = 2, decode_sm_budget: int | None = None, align: int = 64,
                    attn_priority: int = 0, name: str | None = None) -> PipelinePlan:
    """Cut the dense batch into equal nano-batches; GEMMs, norms and small ops on stream 0, attention on
    stream 1. Issue order per layer: every nano-batch's pre-attention ops (so attention of nano-batch i
    overlaps the qkv GEMM of i+1), then every nano-batch's o_proj + MLP (so the last attention overlaps
    the MLP of the earlier ones). Decode attention may be confined to `decode_sm_budget` programs.
    """
    edges = [i / num_nano_batches for i in range(num_nano_batches + 1)]
    ranges = list(zip(edges[:-1], edges[1:], strict=True))
    ops = []
    for lo, hi in ranges:
        ops += [OpInstance(op, lo, hi) for op in PRE_ATTN]
        ops += [OpInstance("decode_attn", lo, hi, stream=1, sm_budget=decode_sm_budget),
                OpInstance("prefill_attn", lo, hi, stream=1)]
    for lo, hi in ranges:
        ops += [OpInstance(op, lo, hi) for op in POST_ATTN]
    budget = f"-sm{decode_sm_budget}" if decode_sm_budget else ""
    return PipelinePlan(name or f"nb{num_nano_batches}{budget}", tuple(ops), num_streams=2, align=align,
                        stream_priorities=(0, attn_priority),
                        meta={"generator": "engine.plan_library.nano_batch_plan",
                              "params": {"num_nano_batches": num_nano_batches,
                                         "decode_sm_budget": decode_sm_budget, "align": align}})


def default_plan(model: ModelConfig) -> PipelinePlan:
    """The plan `--engine nanoflow` runs without `--plan`.

    Measured on an H200 with llama-3-8b (results/reference/h200/engine-sequential.json), the two-nano-batch
    overlap plan on plain streams was 1.01x of sequential on 1024/512, 0.93x on 512/512 and 0.75x on
    ShareGPT: full-grid kernels on two streams interfere more than they overlap. Until `nanotune search`
    (or better SM partitioning) finds a plan that wins, the default is the sequential plan.
    """
    return PipelinePlan("sequential", PipelinePlan.sequential().ops, meta={"model": model.name,
                                                                           "why": "overlap measured slower"})
