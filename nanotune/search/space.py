"""The search space over nano-batch pipelines, and the builder that turns one point of it into a plan.

Parameters (conditional ones only when they mean something):
- dense_batch_tokens: the dense batch (EngineConfig.max_num_batched_tokens), 512..4096 by 256;
- max_num_seqs: the decode batch cap (EngineConfig.max_num_seqs), unless --max-num-seqs fixes it: in
  steady state it, the dense batch or the KV cache caps the decode batch, and so throughput and TPOT;
- num_nano_batches 1..4 and share_i: each nano-batch's share of the dense batch's rows (normalized);
- attention_stream: attention on a second stream (overlapping the GEMMs of other nano-batches) or not;
  with it, prefill_on_attention_stream (prefill attention is compute-bound like the GEMMs, so keeping it on
  stream 0 may interfere less), attention_priority (CUDA priority of that stream; the model is blind to
  it, see perfmodel) and issue_order (grouped: every nano-batch's pre-attention ops first, NanoFlow's
  order; pipelined: nano-batch i's post-attention ops after i+1's pre-attention ops; same for 2) and, in the
  grouped order, reverse_post (the later nano-batches' o_proj + MLP first, plan_library's `-rev`: in a mixed
  batch the prefill-only nano-batches' GEMMs then run beside the first one's decode attention);
- partition_decode and decode_sm_budget: decode attention confined to that many programs (~SMs);
- align: row boundaries rounded to 1, 64 or 128 tokens (GEMM tiles);
- collectives (TP > 1 only): all-reduces inline on the compute stream, or on a stream of their own that
  overlaps the next nano-batch's compute. Recorded in the plan's meta; the engine cannot run TP yet.
"""

from __future__ import annotations

from engine.errors import EngineConfigError
from engine.plan import PipelinePlan
from engine.plan_library import ISSUE_ORDERS, nano_batch_plan
from engine.sizing import DEFAULT_MAX_NUM_BATCHED_TOKENS, DEFAULT_MAX_NUM_SEQS
from engine.tuned import TunedConfig
from nanotune.search.perfmodel import COLLECTIVES

DENSE_BATCH_RANGE = (512, 4096, 256)  # low, high, step
MAX_NANO_BATCHES = 4
ALIGNS = (1, 64, 128)
SM_BUDGET_STEP = 4  # decode attention budgets 8, 12, ... up to the profile's SMs (a study is of one profile)
MAX_NUM_SEQS = (128, 256, 384, 512, 768, 1024)
ENGINE_DEFAULT_DENSE_BATCH = DEFAULT_MAX_NUM_BATCHED_TOKENS  # what the baselines run with
ENGINE_DEFAULT_MAX_NUM_SEQS = DEFAULT_MAX_NUM_SEQS


class Infeasible(Exception):
    """A point of the space that cannot run (the trial is pruned with this reason)."""


def suggest_params(trial, tp: int = 1, search_max_num_seqs: bool = True, num_sms: int = 132) -> dict:
    """Draw one pipeline (and its engine batch limits) from an Optuna trial."""
    lo, hi, step = DENSE_BATCH_RANGE
    p: dict = {"dense_batch_tokens": trial.suggest_int("dense_batch_tokens", lo, hi, step=step)}
    if search_max_num_seqs:
        p["max_num_seqs"] = trial.suggest_categorical("max_num_seqs", list(MAX_NUM_SEQS))
    p["num_nano_batches"] = trial.suggest_int("num_nano_batches", 1, MAX_NANO_BATCHES)
    if p["num_nano_batches"] > 1:
        for i in range(p["num_nano_batches"]):
            p[f"share_{i}"] = trial.suggest_float(f"share_{i}", 0.05, 1.0)
    p["attention_stream"] = trial.suggest_categorical("attention_stream", [False, True])
    if p["attention_stream"]:
        p["prefill_on_attention_stream"] = trial.suggest_categorical("prefill_on_attention_stream", [True, False])
        p["attention_priority"] = trial.suggest_categorical("attention_priority", [0, -1])
        if p["num_nano_batches"] > 2:
            p["issue_order"] = trial.suggest_categorical("issue_order", list(ISSUE_ORDERS))
        if p["num_nano_batches"] > 1 and p.get("issue_order", "grouped") == "grouped":
            p["reverse_post"] = trial.suggest_categorical("reverse_post", [False, True])
    p["partition_decode"] = trial.suggest_categorical("partition_decode", [False, True])
    if p["partition_decode"]:
        high = 8 + SM_BUDGET_STEP * max((num_sms - 8) // SM_BUDGET_STEP, 0)
        p["decode_sm_budget"] = trial.suggest_int("decode_sm_budget", 8, high, step=SM_BUDGET_STEP)
    p["align"] = trial.suggest_categorical("align", list(ALIGNS))
    if tp > 1:
        p["collectives"] = trial.suggest_categorical("collectives", list(COLLECTIVES))
    return p


def baseline_params(name: str, dense_batch_tokens: int = ENGINE_DEFAULT_DENSE_BATCH, tp: int = 1,
                    max_num_seqs: int | None = ENGINE_DEFAULT_MAX_NUM_SEQS) -> dict:
    """The hand-written plans as points of the space, enqueued as a fresh study's first trials: the
    sequential plan, and NanoFlow's two-nano-batch overlap (plan_library.nano_batch_plan(2))."""
    p: dict = {"dense_batch_tokens": dense_batch_tokens}
    if max_num_seqs is not None:  # only when the study searches it
        p["max_num_seqs"] = max_num_seqs
    if name == "sequential":
        p.update(num_nano_batches=1, attention_stream=False, partition_decode=False, align=1)
    elif name == "nb2":  # two equal nano-batches, attention on stream 1, full grids, align 64
        p.update(num_nano_batches=2, share_0=0.5, share_1=0.5, attention_stream=True,
                 prefill_on_attention_stream=True, attention_priority=0, reverse_post=False,
                 partition_decode=False, align=64)
    else:
        raise ValueError(f"unknown baseline '{name}'")
    if tp > 1:
        p["collectives"] = "inline"
    return p


def edges(params: dict) -> list[float]:
    """Nano-batch boundaries as fractions of the dense batch, rounded to 1e-3 for readable plan files."""
    n = params["num_nano_batches"]
    if n == 1:
        return [0.0, 1.0]
    shares = [float(params[f"share_{i}"]) for i in range(n)]
    total = sum(shares)
    out, acc = [0.0], 0.0
    for s in shares[:-1]:
        acc += s / total
        out.append(round(acc, 3))
    out.append(1.0)
    if any(b <= a for a, b in zip(out, out[1:], strict=False)):
        raise Infeasible("a nano-batch share rounds to nothing")
    return out


def build_plan(params: dict, name: str = "tuned", num_sms: int | None = None) -> PipelinePlan:
    """The PipelinePlan for one point of the space (built by plan_library.nano_batch_plan, the one builder
    of nano-batch plans), validated (Infeasible with the one-line reason)."""
    overlap = bool(params.get("attention_stream"))
    meta = {"generator": "nanotune.search.space.build_plan", "params": dict(params)}
    if "collectives" in params:
        meta["tp"] = {"collectives": params["collectives"],
                      "note": "modelled, not placed: the plan's ops carry no all-reduce, so the engine runs each "
                              "right after its GEMM on the GEMM's stream ('inline'); 'overlap' (a stream of its "
                              "own, as plan nb2-ar) is not written into the plan yet"}
    try:
        plan = nano_batch_plan(
            int(params["num_nano_batches"]), edges=edges(params), attention_stream=overlap,
            decode_sm_budget=params.get("decode_sm_budget") if params.get("partition_decode") else None,
            align=int(params.get("align", 1)), attn_priority=int(params.get("attention_priority", 0)),
            prefill_attn_stream=1 if params.get("prefill_on_attention_stream", True) else 0,
            reverse_post=bool(params.get("reverse_post")), issue_order=params.get("issue_order", "grouped"),
            name=name, meta=meta)
        plan.validate(num_sms=num_sms, where=name)
    except EngineConfigError as err:
        raise Infeasible(str(err)) from None
    tokens = int(params["dense_batch_tokens"])
    for inst in plan.ops:
        a, b = plan.rows(inst, tokens)
        if a >= b:
            raise Infeasible(f"{name}: a nano-batch gets no rows of a {tokens}-token batch at align {plan.align}")
    return plan


def tuned_config(params: dict, plan: PipelinePlan, model: str, tp: int = 1, source: dict | None = None,
                 kv_cache_dtype: str | None = None) -> TunedConfig:
    """The tuned-config file's content for one point of the space: its plan and the engine limits it
    was evaluated with (max_num_seqs: the engine's default when the study did not search it)."""
    return TunedConfig(plan, int(params["dense_batch_tokens"]),
                       int(params.get("max_num_seqs", ENGINE_DEFAULT_MAX_NUM_SEQS)), model=model, tp=tp,
                       source=source or {}, kv_cache_dtype=kv_cache_dtype)
