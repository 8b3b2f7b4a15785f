"""The objective: a pipeline's predicted throughput (and TPOT) on a workload, from the performance model.

Throughput is vLLM's total_token_throughput (prompt + output tokens per second) in the steady state the
scheduler reaches with this dense batch, or over a replay of the finite trace (`composition="replay"`).
TPOT is the predicted iteration time: every running decode sequence gets one token per iteration. Every
iteration is predicted as the engine runs it by default: a CUDA-graph replay, its rows padded to the bucket.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.plan import PipelinePlan
from nanotune.profile.ops import Shard
from nanotune.search.capacity import WorkloadStats, kv_capacity, steady_state
from nanotune.search.perfmodel import BatchShape, graph_padded, predict
from nanotune.search.profiledata import Profile
from nanotune.search.replay import replay
from nanotune.search.space import ENGINE_DEFAULT_MAX_NUM_SEQS, Infeasible, build_plan, suggest_params

OBJECTIVES = ("throughput", "latency", "both")
DIRECTIONS = {"throughput": ["maximize"], "latency": ["minimize"], "both": ["maximize", "minimize"]}
INFEASIBLE_EXCESS = 1e9  # the constraint value stored on pruned trials (JSON has no infinity)


@dataclass
class SearchContext:
    profile: Profile
    stats: WorkloadStats
    shards: Shard
    memory_gib: float
    objective: str = "throughput"
    tpot_limit_ms: float | None = None
    max_num_seqs: int | None = None  # fixed by the user; None: a searched parameter (engine default 512 else)
    gpu_memory_fraction: float = 0.9
    block_size: int = 16
    max_model_len: int = 8192
    composition: str = "steady"  # "steady" | "replay"
    lengths: list[tuple[int, int]] = field(default_factory=list)  # the trace, for replay
    kv_cache_dtype: str = "auto"  # EngineConfig.kv_cache_dtype tuned for (nanotune.search.kv_dtype)
    kv_dtype_bytes: int = 2  # its bytes per K/V element (engine.config.kv_cache_dtype_bytes)
    _replays: dict = field(default_factory=dict, repr=False)

    @property
    def tp(self) -> int:
        return self.profile.tp


@dataclass
class Evaluation:
    plan: PipelinePlan
    dense_batch_tokens: int
    max_num_seqs: int
    collectives: str
    batch: BatchShape  # the steady-state composition (replay: the busiest bucket, for the Gantt)
    limit: str  # what caps the decode batch ("tokens" | "seqs" | "kv" | "replay")
    iteration_ms: float  # TPOT
    layers_ms: float
    throughput: float  # total tokens/s
    kv_tokens: int
    prediction: object = None  # perfmodel.Prediction of `batch` (its timeline draws the Gantt)

    def summary(self) -> dict:
        b = self.batch
        return {"plan": self.plan.name, "dense_batch_tokens": self.dense_batch_tokens,
                "max_num_seqs": self.max_num_seqs,
                "collectives": self.collectives if self.collectives != "none" else None,
                "total_token_throughput": self.throughput, "iteration_ms": self.iteration_ms,
                "tpot_ms": self.iteration_ms, "layers_ms": self.layers_ms, "kv_cache_tokens": self.kv_tokens,
                "batch": {"num_decode": b.num_decode, "decode_context": b.decode_context,
                          "num_prefill": b.num_prefill, "prefill_attended": b.prefill_context,
                          "limited_by": self.limit}}


def evaluate(ctx: SearchContext, plan: PipelinePlan, dense_batch_tokens: int, collectives: str = "inline",
             max_num_seqs: int | None = None) -> Evaluation:
    """Predict one plan at one dense-batch size (Infeasible when the KV cache cannot hold the workload)."""
    seqs = max_num_seqs or ctx.max_num_seqs or ENGINE_DEFAULT_MAX_NUM_SEQS
    cap = kv_capacity(ctx.shards, ctx.memory_gib, ctx.gpu_memory_fraction, dense_batch_tokens, seqs,
                      ctx.block_size, kv_dtype_bytes=ctx.kv_dtype_bytes)
    if cap.num_tokens < ctx.stats.max_total:
        raise Infeasible(f"KV cache of {max(cap.num_tokens, 0)} tokens cannot hold the longest request "
                         f"({ctx.stats.max_total} tokens) with a {dense_batch_tokens}-token dense batch")
    coll = collectives if ctx.tp > 1 else "none"
    if ctx.composition == "replay":
        return _evaluate_replay(ctx, plan, dense_batch_tokens, seqs, coll, cap)
    ss = steady_state(ctx.stats, dense_batch_tokens, seqs, cap.num_tokens, ctx.block_size)
    pred = predict(plan, ctx.profile, graph_padded(ss.batch, dense_batch_tokens, seqs), coll)
    return Evaluation(plan, dense_batch_tokens, seqs, coll, ss.batch, ss.limit, pred.iteration_ms, pred.layers_ms,
                      ss.total_tokens_per_s(ctx.stats, pred.iteration_ms), cap.num_tokens, pred)


def _evaluate_replay(ctx, plan, tokens, seqs, coll, cap) -> Evaluation:
    key = (tokens, seqs, cap.num_blocks)
    if key not in ctx._replays:  # the schedule depends on the batch limits and cache, not on the plan
        r = replay(ctx.lengths, tokens, seqs, cap.num_blocks, ctx.block_size, ctx.max_model_len)
        ctx._replays[key] = (r, r.buckets())
    rep, buckets = ctx._replays[key]
    total_ms, layers_ms, busiest, best_n = 0.0, 0.0, None, -1
    for batch, n in buckets:
        pred = predict(plan, ctx.profile, graph_padded(batch, tokens, seqs), coll)
        total_ms += n * pred.iteration_ms
        layers_ms += n * pred.layers_ms
        if n > best_n:
            busiest, best_n = (batch, pred), n
    iters = len(rep.batches)
    # TPOT as the mean iteration time: every decode token of the run waits one iteration
    return Evaluation(plan, tokens, seqs, coll, busiest[0], "replay", total_ms / iters, layers_ms / iters,
                      rep.total_tokens * 1e3 / total_ms, cap.num_tokens, busiest[1])


class Objective:
    """Optuna objective: one pipeline from the space, predicted; infeasible points are pruned."""

    def __init__(self, ctx: SearchContext):
        self.ctx = ctx

    def __call__(self, trial):
        import optuna

        drawn = suggest_params(trial, self.ctx.tp, self.ctx.max_num_seqs is None, self.ctx.profile.num_sms)
        params = full_params(drawn, self.ctx)
        try:
            plan = build_plan(params, "candidate", self.ctx.profile.num_sms)
            ev = evaluate(self.ctx, plan, params["dense_batch_tokens"], params.get("collectives", "inline"),
                          params.get("max_num_seqs"))
        except Infeasible as e:
            trial.set_user_attr("pruned_reason", str(e))
            self._constrain(trial, INFEASIBLE_EXCESS)
            raise optuna.TrialPruned(str(e)) from None
        limit = self.ctx.tpot_limit_ms
        trial.set_user_attr("total_token_throughput", ev.throughput)
        trial.set_user_attr("tpot_ms", ev.iteration_ms)
        trial.set_user_attr("layers_ms", ev.layers_ms)
        trial.set_user_attr("num_decode", ev.batch.num_decode)
        trial.set_user_attr("limited_by", ev.limit)
        self._constrain(trial, ev.iteration_ms - limit if limit else 0.0)
        return {"throughput": ev.throughput, "latency": ev.iteration_ms,
                "both": (ev.throughput, ev.iteration_ms)}[self.ctx.objective]

    def _constrain(self, trial, excess_ms: float) -> None:
        """Record TPOT over the limit (feasible when <= 0); the sampler learns it when a limit is set."""
        trial.set_user_attr("tpot_excess_ms", excess_ms)
        if self.ctx.tpot_limit_ms and hasattr(trial, "set_constraint"):
            trial.set_constraint("tpot_excess_ms", excess_ms)


def full_params(params: dict, ctx: SearchContext) -> dict:
    """A trial's parameters plus the fixed ones (max_num_seqs given by the user is not a trial parameter)."""
    p = dict(params)
    if ctx.max_num_seqs is not None:
        p.setdefault("max_num_seqs", ctx.max_num_seqs)
    return p


def constraints(trial) -> list[float]:
    """Optuna constraints_func: feasible when <= 0 (predicted TPOT within the limit)."""
    return [float(trial.user_attrs.get("tpot_excess_ms", INFEASIBLE_EXCESS))]
