"""Hand-written plans: the sequential plan and NanoFlow-style nano-batch overlap, as data.

`search` writes tuned plans; these are the defaults until it has. A plan is produced here from a few
parameters and returned as a PipelinePlan (saveable JSON): nothing here is executable code of its own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from engine.config import ModelConfig
from engine.errors import EngineConfigError
from engine.plan import GEMM_OPS, OpInstance, PipelinePlan

PRE_ATTN = ("attn_norm", "qkv", "rope_kv")
POST_ATTN = ("o_proj", "mlp_norm", "gate_up", "silu_mul", "down")
ISSUE_ORDERS = ("grouped", "pipelined")


def nano_batch_plan(num_nano_batches: int = 2, decode_sm_budget: int | None = None, align: int = 64,
                    attn_priority: int = 0, name: str | None = None, partition: str = "grid",
                    gemm_sm_budget: int | None = None, prefill_attn_stream: int = 1,
                    reverse_post: bool = False, edges: Sequence[float] | None = None,
                    attention_stream: bool = True, issue_order: str = "grouped", collective_stream: bool = False,
                    meta: dict | None = None) -> PipelinePlan:
    """Cut the dense batch into nano-batches (equal ones, or at `edges`: fractions 0 = e0 < ... < eN = 1);
    GEMMs, norms and small ops on stream 0, attention on stream 1 (attention_stream=False: everything on
    stream 0, one stream). This is the one builder of nano-batch plans: the named plans below and every
    point of `nanotune search`'s space come from it.

    issue_order "grouped": every nano-batch's pre-attention ops first (so attention of nano-batch i overlaps
    the qkv GEMM of i+1), then every nano-batch's o_proj + MLP (so the last attention overlaps the MLP of
    the earlier ones); "pipelined": nano-batch i's o_proj + MLP right after nano-batch i+1's pre-attention
    ops.

    partition "grid": decode attention runs at most `decode_sm_budget` programs; "cublas": as well, and the
    GEMMs aim at `gemm_sm_budget` SMs; "green": stream 0 lives in a green context of `gemm_sm_budget` SMs
    and stream 1 in one of `decode_sm_budget` SMs (engine/partition.py).

    Decode rows come first in the dense batch, so in a mixed batch the first nano-batch holds the decode
    tokens. prefill_attn_stream=0 keeps the (compute-bound) prefill attention with the GEMMs, and
    reverse_post (grouped order) issues the later nano-batches' o_proj + MLP first: then the GEMMs of the
    prefill-only nano-batches run while the first one's decode attention streams KV on stream 1 (NanoFlow's
    pairing).

    collective_stream (tensor parallelism, name suffix '-ar'): the all-reduces run on a stream of their own
    (the last one), and in the grouped order the post-attention ops become every nano-batch's o_proj first,
    then each one's MLP, so nano-batch i's all-reduce runs beside nano-batch i+1's GEMMs (NanoFlow's network
    overlap); in the pipelined order each nano-batch's post-attention ops carry their two all-reduces. A plan
    without it leaves the collectives implied (PipelinePlan.with_collectives: after their GEMMs, inline).
    """
    if not 1 <= num_nano_batches <= MAX_NANO_BATCHES:
        raise EngineConfigError(f"nano_batch_plan: {num_nano_batches} nano-batches: must be within "
                                f"1..{MAX_NANO_BATCHES}")
    if edges is None:
        edges = [i / num_nano_batches for i in range(num_nano_batches + 1)]
    elif len(edges) != num_nano_batches + 1:
        raise EngineConfigError(f"nano_batch_plan: {len(edges)} edges for {num_nano_batches} nano-batches")
    if issue_order not in ISSUE_ORDERS:
        raise EngineConfigError(f"nano_batch_plan: issue order '{issue_order}' is not one of "
                                f"{', '.join(ISSUE_ORDERS)}")
    ranges = list(zip(edges[:-1], edges[1:], strict=True))
    gemm_budget = gemm_sm_budget if partition == "cublas" else None
    attn_budget = decode_sm_budget if partition != "green" else None
    attn_s = 1 if attention_stream else 0
    prefill_s = prefill_attn_stream if attention_stream else 0
    compute_streams = 2 if attention_stream else 1
    coll_s = compute_streams  # the collective stream, when there is one, comes after the compute streams

    def gemm(op, lo, hi):
        return OpInstance(op, lo, hi, sm_budget=gemm_budget if op in GEMM_OPS else None)

    def pre(lo, hi):
        return [gemm(op, lo, hi) for op in PRE_ATTN] + [
            OpInstance("decode_attn", lo, hi, stream=attn_s, sm_budget=attn_budget),
            OpInstance("prefill_attn", lo, hi, stream=prefill_s)]

    def post(lo, hi):
        if not collective_stream:
            return [gemm(op, lo, hi) for op in POST_ATTN]
        return ([gemm("o_proj", lo, hi), OpInstance("o_allreduce", lo, hi, stream=coll_s)]
                + [gemm(op, lo, hi) for op in POST_ATTN[1:]] + [OpInstance("down_allreduce", lo, hi, stream=coll_s)])

    ops = []
    if issue_order == "pipelined":
        for i, r in enumerate(ranges):  # pre(i) then post(i-1): the GEMMs of i+1 fill attention's shadow
            ops += pre(*r)
            if i:
                ops += post(*ranges[i - 1])
        ops += post(*ranges[-1])
    else:
        for r in ranges:
            ops += pre(*r)
        order = list(reversed(ranges) if reverse_post else ranges)
        if not collective_stream:
            for r in order:
                ops += post(*r)
        else:  # every o_proj (+ its all-reduce) first, then every MLP: all-reduce i beside the GEMMs of i+1
            for lo, hi in order:
                ops += [gemm("o_proj", lo, hi), OpInstance("o_allreduce", lo, hi, stream=coll_s)]
            for lo, hi in order:
                ops += [gemm(op, lo, hi) for op in POST_ATTN[1:]] + [
                    OpInstance("down_allreduce", lo, hi, stream=coll_s)]
    if name is None:
        tag = {"grid": "", "cublas": "-cublas", "green": "-green"}.get(partition, f"-{partition}")
        budget = f"-sm{decode_sm_budget}" if decode_sm_budget else ""
        budget += ("-pf0" if prefill_attn_stream == 0 else "") + ("-rev" if reverse_post else "")
        budget += "-ar" if collective_stream else ""
        custom = edges != [i / num_nano_batches for i in range(num_nano_batches + 1)] or not attention_stream \
            or issue_order != "grouped"
        name = f"{'custom-' if custom else ''}nb{num_nano_batches}{tag}{budget}"
    if meta is None:
        meta = {"generator": "engine.plan_library.nano_batch_plan",
                "params": {"num_nano_batches": num_nano_batches, "partition": partition,
                           "decode_sm_budget": decode_sm_budget, "gemm_sm_budget": gemm_sm_budget,
                           "align": align, "attn_priority": attn_priority,
                           "prefill_attn_stream": prefill_attn_stream, "reverse_post": reverse_post,
                           **({"collective_stream": True} if collective_stream else {})}}
    priorities = ((0, attn_priority) if attention_stream else (0,)) + ((0,) if collective_stream else ())
    sms = ((gemm_sm_budget, decode_sm_budget) if attention_stream else (gemm_sm_budget,)) + (
        (None,) if collective_stream else ())
    return PipelinePlan(name, tuple(ops), num_streams=compute_streams + collective_stream, align=align,
                        stream_priorities=priorities if len(priorities) > 1 else (), partition=partition,
                        stream_sms=sms if partition == "green" else (),
                        meta=meta)


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


def resolve_plan(spec: str | None, num_sms: int | None = None, model: ModelConfig | None = None) -> PipelinePlan:
    """What a user passes as a plan: None (the engine's default plan for `model`; sequential without a
    model), a plan JSON or tuned-config file (engine/tuned.py), or a name plan_from_name takes."""
    if not spec:
        return default_plan(model) if model is not None else PipelinePlan.sequential()
    if spec.endswith(".json") or "/" in spec or Path(spec).is_file():
        from engine.tuned import load_tuned

        return load_tuned(spec).plan
    try:
        return plan_from_name(spec, num_sms or 1 << 16)  # budgets are checked against the GPU when it runs
    except EngineConfigError as e:
        raise EngineConfigError(f"{e} (or a plan JSON file)") from None


def default_plan(model: ModelConfig) -> PipelinePlan:
    """The plan the engine runs when none is given (`--engine nanoflow` without `--plan`).

    The sequential plan, until `nanotune search` (or better kernels) finds an overlapped plan that beats it
    on the engine: on the H200 the hand-written overlapped and SM-partitioned plans measured slower than
    sequential on the reference workloads (README, "Measured"; results/reference/h200/engine-overlap*.json).
    """
    return PipelinePlan("sequential", PipelinePlan.sequential().ops, meta={"model": model.name,
                                                                           "why": "overlap measured slower"})
