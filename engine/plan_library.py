"""Hand-written plans: the sequential plan and NanoFlow-style nano-batch overlap, as data.

`search` writes tuned plans; these are the defaults until it has. A plan is produced here from a few
parameters and returned as a PipelinePlan (saveable JSON): nothing here is executable code of its own.
"""

from __future__ import annotations

import re
from pathlib import Path

from engine.config import ModelConfig
from engine.errors import EngineConfigError
from engine.plan import GEMM_OPS, OpInstance, PipelinePlan

PRE_ATTN = ("attn_norm", "qkv", "rope_kv")
POST_ATTN = ("o_proj", "mlp_norm", "gate_up", "silu_mul", "down")


def nano_batch_plan(num_nano_batches: int = 2, decode_sm_budget: int | None = None, align: int = 64,
                    attn_priority: int = 0, name: str | None = None, partition: str = "grid",
                    gemm_sm_budget: int | None = None, prefill_attn_stream: int = 1,
                    reverse_post: bool = False, collective_stream: bool = False) -> PipelinePlan:
    """Cut the dense batch into equal nano-batches; GEMMs, norms and small ops on stream 0, attention on
    stream 1. Issue order per layer: every nano-batch's pre-attention ops (so attention of nano-batch i
    overlaps the qkv GEMM of i+1), then every nano-batch's o_proj + MLP (so the last attention overlaps
    the MLP of the earlier ones).

    partition "grid": decode attention runs at most `decode_sm_budget` programs; "cublas": as well, and the
    GEMMs aim at `gemm_sm_budget` SMs; "green": stream 0 lives in a green context of `gemm_sm_budget` SMs
    and stream 1 in one of `decode_sm_budget` SMs (None = all SMs).

    Decode rows come first in the dense batch, so in a mixed batch the first nano-batch holds the decode
    tokens. prefill_attn_stream=0 keeps the (compute-bound) prefill attention with the GEMMs, and
    reverse_post issues the later nano-batches' o_proj + MLP first: then the GEMMs of the prefill-only
    nano-batches run while the first one's decode attention streams KV on stream 1 (NanoFlow's pairing).

    collective_stream (tensor parallelism, name suffix '-ar'): the all-reduces run on a stream of their own
    (stream 2), and the post-attention order becomes every nano-batch's o_proj first, then each one's MLP, so
    nano-batch i's all-reduce runs beside nano-batch i+1's GEMMs (NanoFlow's network overlap).
    """
    edges = [i / num_nano_batches for i in range(num_nano_batches + 1)]
    ranges = list(zip(edges[:-1], edges[1:], strict=True))
    gemm_budget = gemm_sm_budget if partition == "cublas" else None
    attn_budget = decode_sm_budget if partition != "green" else None
    ops = []
    for lo, hi in ranges:
        ops += [OpInstance(op, lo, hi, sm_budget=gemm_budget if op in GEMM_OPS else None) for op in PRE_ATTN]
        ops += [OpInstance("decode_attn", lo, hi, stream=1, sm_budget=attn_budget),
                OpInstance("prefill_attn", lo, hi, stream=prefill_attn_stream)]
    post = list(reversed(ranges) if reverse_post else ranges)
    gemm = lambda op, lo, hi: OpInstance(op, lo, hi, sm_budget=gemm_budget if op in GEMM_OPS else None)
    if not collective_stream:
        for lo, hi in post:
            ops += [gemm(op, lo, hi) for op in POST_ATTN]
    else:
        for lo, hi in post:
            ops += [gemm("o_proj", lo, hi), OpInstance("o_allreduce", lo, hi, stream=2)]
        for lo, hi in post:
            ops += [gemm(op, lo, hi) for op in POST_ATTN[1:]] + [OpInstance("down_allreduce", lo, hi, stream=2)]
    tag = {"grid": "", "cublas": "-cublas", "green": "-green"}[partition]
    budget = f"-sm{decode_sm_budget}" if decode_sm_budget else ""
    budget += ("-pf0" if prefill_attn_stream == 0 else "") + ("-rev" if reverse_post else "")
    budget += "-ar" if collective_stream else ""
    return PipelinePlan(name or f"nb{num_nano_batches}{tag}{budget}", tuple(ops), num_streams=2 + collective_stream,
                        align=align, stream_priorities=(0, attn_priority) + ((0,) if collective_stream else ()),
                        partition=partition,
                        stream_sms=((gemm_sm_budget, decode_sm_budget) + ((None,) if collective_stream else ())
                                    if partition == "green" else ()),
                        meta={"generator": "engine.plan_library.nano_batch_plan",
                              "params": {"num_nano_batches": num_nano_batches, "partition": partition,
                                         "decode_sm_budget": decode_sm_budget, "gemm_sm_budget": gemm_sm_budget,
                                         "align": align, "attn_priority": attn_priority,
                                         "prefill_attn_stream": prefill_attn_stream, "reverse_post": reverse_post,
                                         **({"collective_stream": True} if collective_stream else {})}})


# More nano-batches than this cut a dense batch into slivers smaller than a GEMM tile; each adds a pass of
# every op of every layer, so nb99999 would run for hours without finishing a step.
MAX_NANO_BATCHES = 64


def plan_from_name(name: str, num_sms: int) -> PipelinePlan:
    """'sequential' or nano_batch_plan's own names: nb<N>[-cublas|-green][-sm<decode SMs>][-pf0][-rev][-prio],
    e.g. 'nb2-cublas-sm33' = two nano-batches, decode attention on 33 SMs, GEMMs aimed at the other
    num_sms - 33; '-pf0' = prefill attention on the GEMM stream; '-rev' = later nano-batches' MLPs first;
    '-ar' = all-reduces on a stream of their own (tensor parallelism)."""
    if name == "sequential":
        return PipelinePlan.sequential()
    m = re.fullmatch(r"nb(\d+)(?:-(cublas|green))?(?:-sm(\d+))?(-pf0)?(-rev)?(-prio)?(-ar)?", name)
    if not m:
        raise EngineConfigError(f"plan name '{name}': expected 'sequential' or "
                                "nb<N>[-cublas|-green][-sm<S>][-pf0][-rev][-prio][-ar]")
    n, partition, sms, pf0, rev, prio = int(m[1]), m[2] or "grid", m[3], bool(m[4]), bool(m[5]), bool(m[6])
    if not 1 <= n <= MAX_NANO_BATCHES:
        raise EngineConfigError(f"plan name '{name}': nb{n}: the number of nano-batches must be within "
                                f"1..{MAX_NANO_BATCHES}")
    decode = int(sms) if sms else None
    if decode is not None and not 1 <= decode < num_sms:
        raise EngineConfigError(f"plan name '{name}': sm{decode} must be within 1..{num_sms - 1}")
    if partition != "grid" and decode is None:
        raise EngineConfigError(f"plan name '{name}': partition '{partition}' needs -sm<S>")
    gemm = num_sms - decode if decode is not None and partition != "grid" else None
    return nano_batch_plan(n, decode_sm_budget=decode, attn_priority=-1 if prio else 0, partition=partition,
                           gemm_sm_budget=gemm, name=name, prefill_attn_stream=0 if pf0 else 1, reverse_post=rev,
                           collective_stream=bool(m[7]))


def resolve_plan(spec: str | None, num_sms: int | None = None) -> PipelinePlan:
    """What a user passes as a plan: None (sequential), a plan JSON file, or a name plan_from_name takes."""
    if not spec:
        return PipelinePlan.sequential()
    if spec.endswith(".json") or "/" in spec or Path(spec).is_file():
        return PipelinePlan.load(spec)
    try:
        return plan_from_name(spec, num_sms or 1 << 16)  # budgets are checked against the GPU when it runs
    except EngineConfigError as e:
        raise EngineConfigError(f"{e} (or a plan JSON file)") from None


def default_plan(model: ModelConfig) -> PipelinePlan:
    """The plan `--engine nanoflow` runs without `--plan`.

    Measured on an H200 with llama-3-8b (results/reference/h200/engine-overlap*.json), two nano-batches on
    plain streams were 0.97-1.03x of sequential on 1024/512, 0.92x on 512/1024, 0.99x on 512/512, 0.94x on
    Splitwise and 0.63-0.68x on ShareGPT/LMSYS with eager mixed steps, and 0.81-0.94x on all six with mixed
    CUDA graphs (engine-overlap-mixed-graphs*.json); SM-partitioned variants (bounded attention grid,
    cuBLASLt SM targets) were slower still. Until `nanotune search` (or better kernels) finds a plan that wins, the
    default is the sequential plan.
    """
    return PipelinePlan("sequential", PipelinePlan.sequential().ops, meta={"model": model.name,
                                                                           "why": "overlap measured slower"})
