"""The performance model: one iteration's time for a plan and a batch composition, predicted by simulating
the plan's op instances on their streams with profiled alone-times and interference slowdowns.

What it simulates, as the executor (engine/pipeline.py) runs a plan:
- every layer issues the plan's instances in order; a stream runs its own instances one after another;
- an instance starts when its stream is free and its producers are done: the same-layer producers
  (`plan.producers`) and, for attn_norm, the previous layer's `down` over its rows (`first_layer_deps`);
- an instance with no rows of its kind (decode attention over prefill rows, say) launches nothing and
  takes no time, but still holds its place in its stream's order, as the executor's events do;
- while instances on different streams overlap, each progresses at 1 / slowdown of its alone rate, with
  the slowdown of the pair from the profile's interference table (several at once: the excesses add);
- the layers are simulated one after another in full (so work of layer l+1 may overlap the tail of l),
  then the lm_head and sampling of the sampled rows are added (estimated from the profile's peaks).
Under tensor parallelism an all-reduce follows each o_proj and down instance, either inline on the
producer's stream or on a stream of its own that overlaps compute (a choice recorded in the plan's meta), or
where the plan places them as its own collective ops (engine.plan.COLLECTIVE_OPS), as the engine runs them.
Every alone time is scaled by the profile's sustained-load factor for its bound (compute or memory): a
serving card runs at its power limit, the profile's short timings at boost clock.
Launches: a CUDA-graph replay (the engine replays graphs for decode-only and captured mixed iterations)
adds the profile's measured graph gap per kernel (slightly negative on an H200: back to back in a graph,
kernels take a little less than the profile's repeats of one); an eager iteration (`graphs=False`) cannot start a
kernel before the host has launched it, one after another at the profile's measured launch cost.
Not simulated: other host time (the scheduler runs one iteration ahead), stream priorities (the profile
does not measure them), and L2 effects between neighbouring ops.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from engine.plan import COLLECTIVE_OPS, PipelinePlan
from nanotune.search.interp import interp_loglog
from nanotune.search.profiledata import Profile

COLLECTIVES = ("inline", "overlap")
# Estimates for what profiles do not time (the result's notes say so): the all-reduce (no peers when
# profiling; the profile lists its bytes per token) and the lm_head + sampling (not a layer op).
ALLREDUCE_BUS_GB_S = 360.0  # NCCL ring all-reduce bus bandwidth over NVLink 4 (H100/H200 class)
ALLREDUCE_LATENCY_MS = 0.01
LM_HEAD_GEMM_EFFICIENCY = 0.7  # of the bf16 peak: the lm_head GEMM is wide (vocab) but short (sampled rows)
SAMPLING_PASSES = 3  # fp32 logits read by softmax/argmax/copies
# A stream idles this long between two kernels of an eager iteration (host launch; profiles time kernels
# back to back, so their times leave it out) when the profile has no `launch` section: on an H200,
# llama-3-8b, sequential plan, each timed iteration's span exceeds the sum of its op times by about this much
# per op on all three workloads (results/reference/h200/engine-sequential.json).
LAUNCH_GAP_MS = 0.008
# Between two kernels of a graph replay, without a `launch` section: the GPU starts the next kernel of a
# graph without the host, and the profile's back-to-back timings already hold the GPU's own launch latency.
GRAPH_GAP_MS = 0.0


@dataclass(frozen=True)
class BatchShape:
    """One iteration's dense batch: decode tokens (one per sequence) first, then prefill tokens. Contexts are
    in the profile's terms: a decode token reads `decode_context` cached tokens (itself included)."""

    num_decode: float
    decode_context: float  # mean KV length (tokens) a decode token attends, itself included
    num_prefill: float = 0.0
    prefill_context: float = 0.0  # mean KV length a prefill token attends (its position in the prompt)
    num_sampled: float | None = None  # rows whose next token is sampled; default: decode + one prefill seq
    num_padding: float = 0.0  # rows a CUDA graph's bucket adds (after the prefill rows): token ops only

    @property
    def num_tokens(self) -> int:
        return int(round(self.num_decode)) + int(round(self.num_prefill)) + int(round(self.num_padding))

    @property
    def sampled(self) -> float:
        if self.num_sampled is not None:
            return self.num_sampled
        return self.num_decode + (1.0 if self.num_prefill > 0 else 0.0)


@dataclass
class Node:
    layer: int
    index: int  # plan instance index (-1 for a collective)
    op: str
    stream: int
    ms: float  # alone time
    point: dict
    sm_budget: int | None
    deps: list[int]
    start: float = -1.0
    end: float = -1.0


@dataclass
class Prediction:
    layers_ms: float  # the forward over every layer (what the engine's op timings span)
    lm_head_ms: float
    nodes: list[Node]  # the simulated timeline (start/end in ms from the iteration's start)
    num_streams: int

    @property
    def iteration_ms(self) -> float:
        return self.layers_ms + self.lm_head_ms

    def busy_ms(self) -> dict[str, float]:
        """Per-op simulated time summed over layers (comparable with engine.observe.OpProfile's mean_op_ms)."""
        out: dict[str, float] = {}
        for n in self.nodes:
            out[n.op] = out.get(n.op, 0.0) + (n.end - n.start)
        return out


def instance_point(op: str, a: int, b: int, batch: BatchShape) -> dict:
    """The size an instance over rows [a, b) works on: its decode rows for decode attention, its prefill
    rows for prefill attention, every row for the rest."""
    nd, npf = int(round(batch.num_decode)), int(round(batch.num_prefill))
    if op == "decode_attn":
        return {"batch": max(0, min(b, nd) - a), "context": batch.decode_context}
    if op == "prefill_attn":
        return {"tokens": max(0, min(b, nd + npf) - max(a, nd)), "attended": batch.prefill_context}
    return {"tokens": max(0, b - a)}


def graph_padded(batch: BatchShape, max_tokens: int, max_num_seqs: int) -> BatchShape:
    """The batch as the engine's CUDA graph for it runs: its rows padded up to the graph's bucket
    (engine.graphs for decode-only iterations, engine.mixed_graphs for mixed ones); unchanged when the
    engine would run it eagerly (too large for a graph). Padding rows cost in the token ops (GEMMs,
    norms); in attention they are empty (decode padding attends one token, prefill padding none)."""
    from engine.graphs import buckets
    from engine.mixed_graphs import bucket

    nd, n = int(round(batch.num_decode)), int(round(batch.num_decode)) + int(round(batch.num_prefill))
    max_decode = min(max_num_seqs, max_tokens)
    if n == 0 or nd > max_decode:
        return batch
    if batch.num_prefill <= 0:
        size = next(b for b in buckets(max_decode) if b >= nd)
    elif n <= max_tokens:
        size = bucket(nd, n, max_tokens)[0]
    else:
        return batch
    return replace(batch, num_padding=float(size - n))


def allreduce_ms(profile: Profile, tokens: int) -> float:
    """The all-reduce of `tokens` rows: the profile's measured times interpolated by message bytes when it
    timed the all-reduce over real ranks; else a ring's 2 (tp - 1) / tp of the bytes over ALLREDUCE_BUS_GB_S,
    plus latency."""
    if tokens <= 0:
        return 0.0
    tp = profile.tp
    entry = (profile.data.get("collectives") or {}).get("all_reduce", {})
    bytes_ = tokens * (entry.get("bytes_per_token") or profile.shapes["hidden"] * 2)
    if profile.allreduce_curve:
        return interp_loglog(profile.allreduce_curve, bytes_)
    return ALLREDUCE_LATENCY_MS + 2 * (tp - 1) / tp * bytes_ / (ALLREDUCE_BUS_GB_S * 1e6)


def lm_head_ms(profile: Profile, rows: float) -> float:
    """Final norm + lm_head GEMM + sampling over the sampled rows, from the peaks (profiles do not time the
    lm_head, not being a layer op): the larger of the GEMM's FLOPs at LM_HEAD_GEMM_EFFICIENCY of the bf16
    peak and its weight read at the copy bandwidth, plus SAMPLING_PASSES over the fp32 logits (vocab split
    over TP)."""
    if rows <= 0:
        return 0.0
    s, peaks = profile.shapes, profile.peaks
    vocab = s["vocab"] / profile.tp
    tflops = float(peaks.get("bf16_tflops") or 700.0)
    gb_s = float(peaks.get("copy_gb_s") or 3000.0)
    gemm = max(2 * rows * s["hidden"] * vocab / (tflops * LM_HEAD_GEMM_EFFICIENCY * 1e9),
               s["hidden"] * vocab * 2 / (gb_s * 1e6))
    return gemm + SAMPLING_PASSES * rows * vocab * 4 / (gb_s * 1e6)


def build_nodes(plan: PipelinePlan, profile: Profile, batch: BatchShape, num_layers: int,
                collectives: str = "inline") -> tuple[list[Node], int]:
    """The plan unrolled over layers as a DAG of nodes in issue order; returns (nodes, num_streams)."""
    n_tok = batch.num_tokens
    rows = [plan.rows(inst, n_tok) for inst in plan.ops]
    k_ops = len(plan.ops)
    tp = profile.tp
    comm_stream = plan.num_streams  # a stream of its own when collectives overlap
    num_streams = plan.num_streams + (1 if tp > 1 and collectives == "overlap" else 0)
    base = []  # per instance: (op, stream, ms, point, budget)
    explicit = bool(plan.collective_ops)  # a plan that places its all-reduces (engine.plan.COLLECTIVE_OPS)
    for inst, (a, b) in zip(plan.ops, rows, strict=True):
        if inst.op in COLLECTIVE_OPS:  # timed like the implied ones below; nothing to reduce at TP 1
            ms = allreduce_ms(profile, b - a) if tp > 1 else 0.0
            base.append(("all_reduce", inst.stream, ms, {"tokens": b - a}, None))
            continue
        point = instance_point(inst.op, a, b, batch) if a < b else {"tokens": 0}
        ms = profile.alone_ms(inst.op, point, inst.sm_budget)  # 0 when it has no rows of its kind
        ms *= profile.sustained_factor(inst.op, point)  # the clock a busy card runs at
        base.append((inst.op, inst.stream, ms, point, inst.sm_budget))
    producers = [plan.producers(k) for k in range(k_ops)]
    prev = [plan.first_layer_deps(k) if plan.ops[k].op == "attn_norm" else [] for k in range(k_ops)]
    nodes: list[Node] = []
    prev_ids: dict[int, int] = {}
    for layer in range(num_layers):
        ids: dict[int, int] = {}  # plan index -> node id of its output (the all-reduce's, under TP)
        for k in range(k_ops):
            op, stream, ms, point, budget = base[k]
            deps = [ids[j] for j in producers[k]]
            if layer:
                deps += [prev_ids[j] for j in prev[k]]
            nodes.append(Node(layer, k, op, stream, ms, point, budget, deps))
            ids[k] = len(nodes) - 1
            if tp > 1 and not explicit and op in ("o_proj", "down"):
                a, b = rows[k]
                s = comm_stream if collectives == "overlap" else stream
                nodes.append(Node(layer, -1, "all_reduce", s, allreduce_ms(profile, b - a), {"tokens": b - a},
                                  None, [ids[k]]))
                ids[k] = len(nodes) - 1
        prev_ids = ids
    return nodes, num_streams


def simulate(nodes: list[Node], num_streams: int, profile: Profile, launch_gap_ms: float = 0.0,
             issue_ms: float = 0.0) -> float:
    """Event-driven run of the DAG on its streams; fills start/end; returns the makespan in ms. After each
    kernel its stream idles `launch_gap_ms` before the next can start (zero-length nodes launch nothing).
    `issue_ms`: the host launches the kernels one by one in issue order, this long each, from t = 0; a kernel
    cannot start before the host has launched it (an eager iteration; 0 for a graph replay)."""
    queues: list[list[int]] = [[] for _ in range(num_streams)]
    issue_at, launched = [], 0
    for i, n in enumerate(nodes):
        queues[n.stream].append(i)
        launched += n.ms > 0
        issue_at.append(launched * issue_ms)
    heads = [0] * num_streams
    free_at = [0.0] * num_streams  # when each stream may start its next kernel
    running: dict[int, tuple[int, float]] = {}  # stream -> (node, remaining alone-ms)
    t, eps = 0.0, 1e-12
    while True:
        started = True
        while started:  # start every head whose stream is free and whose producers are done
            started = False
            for s in range(num_streams):
                if s in running or heads[s] >= len(queues[s]) or free_at[s] > t + eps:
                    continue
                i = queues[s][heads[s]]
                if issue_at[i] > t + eps:
                    continue
                n = nodes[i]
                if any(nodes[d].end < 0 for d in n.deps):
                    continue
                heads[s] += 1
                n.start = t
                if n.ms <= 0:
                    n.end = t
                else:
                    running[s] = (i, n.ms)
                started = True
        waiting = [max(free_at[s], issue_at[queues[s][heads[s]]]) for s in range(num_streams)
                   if s not in running and heads[s] < len(queues[s])
                   and max(free_at[s], issue_at[queues[s][heads[s]]]) > t + eps]
        if not running and not waiting:
            if any(heads[s] < len(queues[s]) for s in range(num_streams)):
                raise RuntimeError("plan deadlocks in simulation (a dependency is issued after its consumer)")
            return max((n.end for n in nodes), default=0.0)
        rates = _rates(nodes, running, profile) if running else {}
        dt = min([rem / rates[s] for s, (_, rem) in running.items()] + [f - t for f in waiting])
        t += dt
        for s in list(running):
            i, rem = running[s]
            rem -= dt * rates[s]
            if rem <= 1e-9 * max(nodes[i].ms, 1.0):
                nodes[i].end = t
                free_at[s] = t + launch_gap_ms
                del running[s]
            else:
                running[s] = (i, rem)


def _rates(nodes: list[Node], running: dict[int, tuple[int, float]], profile: Profile) -> dict[int, float]:
    """Progress per ms of each running node: 1 / (1 + the sum of its pairwise slowdown excesses)."""
    if len(running) == 1:
        return {s: 1.0 for s in running}
    rates = {}
    for s, (i, _) in running.items():
        me = nodes[i]
        excess = 0.0
        for s2, (j, _) in running.items():
            if s2 != s:
                other = nodes[j]
                excess += profile.slowdown(me.op, me.point, me.sm_budget, other.op, other.point,
                                           other.sm_budget) - 1.0
        rates[s] = 1.0 / max(1.0 + excess, 1e-3)
    return rates


def launch_gap(profile: Profile, graphs: bool) -> float:
    """ms a stream idles between two kernels (negative: a kernel takes that much less than alone): the
    profile's measured gap of a graph replay; for eager iterations, LAUNCH_GAP_MS when the profile did not
    measure the host's launch cost (else 0: `issue_ms` models eager launches)."""
    if graphs:
        measured = profile.launch_gap_ms("graph")
        return GRAPH_GAP_MS if measured is None else measured
    return 0.0 if profile.host_launch_ms() is not None else LAUNCH_GAP_MS


def predict(plan: PipelinePlan, profile: Profile, batch: BatchShape, collectives: str = "inline",
            num_layers: int | None = None, launch_gap_ms: float | None = None, graphs: bool = True) -> Prediction:
    """One iteration's predicted time (and the simulated timeline) for `plan` on `batch`, replayed as a CUDA
    graph (the engine's default) or launched eagerly (`graphs=False`: the host issues each kernel at the
    profile's measured launch cost). `launch_gap_ms` overrides both with a plain gap after every kernel."""
    layers = num_layers or int(profile.shapes["num_layers"])
    nodes, num_streams = build_nodes(plan, profile, batch, layers, collectives)
    issue = 0.0
    if launch_gap_ms is not None:
        gap = launch_gap_ms
    else:
        gap = launch_gap(profile, graphs)
        issue = 0.0 if graphs else profile.host_launch_ms() or 0.0
    if gap < 0:  # a graph runs kernels back to back tighter than the profile's repeats of one kernel
        for n in nodes:
            if n.ms > 0:
                n.ms = max(n.ms + gap, 0.5 * n.ms)
        gap = 0.0
    span = simulate(nodes, num_streams, profile, gap, issue)
    return Prediction(span, lm_head_ms(profile, batch.sampled), nodes, num_streams)
