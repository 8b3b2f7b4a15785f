"""Hold the model's predictions against the real engine (needs a CUDA GPU; never faked: on CPU the search
skips it; tests run this code on CPU with a tiny model only to check the code path, not the numbers).

Each plan runs a modest offline trace on engine.LLMEngine (random weights, the plan switched in place,
one engine per dense-batch size), twice:
- a warm-up pass over the whole trace (another seed), which compiles every Triton specialization and
  captures every CUDA graph the measured pass will meet (a compile costs a second; one in a measured run of
  twenty would be a 5% error that is the harness's, not the model's). Every `time_ops_every`-th of its
  iterations runs eagerly and synchronously with per-op CUDA-event timings (the Gantt); their spans are
  compared with the model's eager `layers_ms` (`op_timed_mape`);
- the measured pass, as `bench` runs: asynchronous, graphs replayed, nothing timed per op. Every
  iteration's GPU time, from CUDA events around its forward, logits and sampling, is held against the
  model's `iteration_ms` for exactly that iteration's batch composition, predicted as it ran (a graph
  replay, or eager): the iteration MAPE. The run's throughput is held against the prediction summed over
  the same iterations. Each step's host time and its wait on the GPU are kept too: a step that never waits
  was paced by the host, not the GPU.
The engine captures a mixed bucket's graph on its first use, so the warm-up pass captures what the measured
pass replays, as a long-running server would have captured its common buckets. The model predicts the
engine in that state (graphs replayed); `bench` on one pass of a trace also pays the captures.
The headline is the mean absolute percentage error (MAPE) of each.
"""

from __future__ import annotations

import contextlib
import gc
import time

from engine.plan import PipelinePlan
from nanotune.search.perfmodel import graph_padded, predict
from nanotune.search.replay import composition

HOST_BOUND_WAIT_MS = 0.1  # a step that waited less than this on the GPU was paced by the host


def gpu_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _run_trace(engine, lengths, seed: int, time_every: int) -> dict:
    """Offline run of all requests: per-iteration compositions, GPU times (CUDA events) and host/wait
    times, and, every `time_every`-th iteration, per-op timings."""
    import numpy as np
    import torch

    from engine.request import SamplingParams

    rng = np.random.default_rng(seed)
    for p, o in lengths:  # random prompt ids; outputs forced to the trace's lengths, as `bench` offline does
        engine.add_request(rng.integers(0, engine.vocab_size, p).tolist(),
                           SamplingParams(max_tokens=o, ignore_eos=True))
    records = []
    runner = engine.runner
    captured0 = _num_graphs(runner)
    _sync(torch)
    t0 = time.perf_counter()
    engine.add_observer(records.append, gpu_time=True)  # one StepRecord per step, GPU times included
    try:
        step = 0
        while engine.has_unfinished():
            engine.step([] if time_every and step % time_every == time_every - 1 else None)
            step += 1
        _sync(torch)
        wall = time.perf_counter() - t0
    finally:
        engine.remove_observer(records.append)
    launched = [r for r in records if r.launched]  # a step that schedules nothing launches nothing
    batches = [composition(r.batch) for r in launched]
    timed = [(i, max(t.end_ms for t in r.op_timings) - min(t.start_ms for t in r.op_timings), r.op_timings)
             for i, r in enumerate(launched) if r.op_timings]
    # an op-timed iteration's span includes its per-op events: not a plain iteration time
    step_ms = [None if r.op_timings else r.gpu_ms() for r in launched]
    return {"wall_s": wall, "batches": batches, "timed": timed, "step_ms": step_ms,
            "replayed": [r.replayed for r in launched], "host_ms": [1e3 * r.host_s for r in records],
            "wait_ms": [1e3 * r.wait_s for r in records], "graphs_captured": _num_graphs(runner) - captured0}


def _num_graphs(runner) -> int:
    mixed = getattr(runner, "mixed_graphs", None)
    return len(mixed.graphs) if mixed is not None else 0


@contextlib.contextmanager
def _nvml(device: str):
    """NVML samples on a CUDA device (None elsewhere, or without NVML)."""
    if not device.startswith("cuda"):
        yield None
        return
    import torch

    from nanotune.profile.nvml import NvmlSampler

    with NvmlSampler(torch.device(device).index or 0) as nv:
        yield nv if nv.available else None


def _sync(torch) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def validate_plans(entries: list[tuple[str, PipelinePlan, int, int]], ctx, model: str,
                   lengths: list[tuple[int, int]], seed: int = 0, time_every: int = 10, log=print,
                   device: str = "cuda", tp: int = 1) -> dict:
    """entries: (label, plan, max_num_batched_tokens, max_num_seqs). Returns result.json's validation block."""
    import torch

    from engine import EngineConfig, LLMEngine

    total_tokens = sum(p + o for p, o in lengths)
    rows, gantt = [], None
    by_limits: dict[tuple[int, int], list] = {}
    for e in entries:
        by_limits.setdefault((e[2], e[3]), []).append(e)
    for (tokens, seqs), group in by_limits.items():  # one engine per limits; plans switched in place
        engine = LLMEngine(EngineConfig(model=model, device=device, seed=seed, max_num_batched_tokens=tokens,
                                        max_num_seqs=seqs, block_size=ctx.block_size,
                                        gpu_memory_fraction=ctx.gpu_memory_fraction, tp=tp,
                                        kv_cache_dtype=ctx.kv_cache_dtype))
        for label, plan, _, _ in group:
            engine.set_plan(plan)
            warm = _run_trace(engine, lengths, seed + 1, time_every)  # compiles, captures; the op timings
            with _nvml(device) as nv:  # the clocks the card ran at (the model scales by the sustained factors)
                run = _run_trace(engine, lengths, seed, 0)
            row = _compare(label, plan, tokens, seqs, run, warm, ctx, total_tokens)
            row["max_num_seqs"] = seqs
            row["nvml"] = nv.summary().get("overall") if nv is not None else None
            row["num_kv_blocks"] = engine.runner.cache_info.num_blocks
            rows.append(row)
            if gantt is None and warm["timed"]:  # the first entry is the best plan: draw its largest
                # op-timed iteration of the warm-up's second half (past the compiles; large: GPU-bound)
                late = warm["timed"][len(warm["timed"]) // 2:]
                idx, _, timings = max(late, key=lambda x: warm["batches"][x[0]].num_tokens)
                gantt = {"plan": label, "iteration": idx, "batch": vars(warm["batches"][idx]),
                         "timings": [vars(t) for t in timings]}
            log(f"validated {label}: measured {row['measured']['total_token_throughput']:,.0f} tok/s, "
                f"predicted {row['predicted']['total_token_throughput']:,.0f}; iteration MAPE "
                f"{row['iteration_mape']:.1%}")
        engine.close()  # tensor parallelism: ends the other ranks
        del engine
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    its = [r["iteration_mape"] for r in rows if r["iteration_mape"] is not None]
    thr = [r["throughput_ape"] for r in rows]
    return {"num_requests": len(lengths), "time_ops_every": time_every, "plans": rows,
            "iteration_mape": sum(its) / len(its) if its else None,
            "throughput_mape": sum(thr) / len(thr) if thr else None, "gantt_measured": gantt,
            "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else device,
            "profile_gpu": ctx.profile.gpu_name}


def _compare(label, plan, tokens, seqs, run, warm, ctx, total_tokens) -> dict:
    cache: dict = {}

    def prediction(b, graphs=True):
        if graphs:  # a replay runs the graph of the batch's bucket, padding rows and all
            b = graph_padded(b, tokens, seqs)
        key = (round(b.num_decode), round(b.decode_context, -1), round(b.num_prefill), round(b.prefill_context, -1),
               round(b.num_padding), graphs)
        if key not in cache:
            cache[key] = predict(plan, ctx.profile, b, graphs=graphs)
        return cache[key]

    op_errors, op_ms = [], {}
    for idx, measured, timings in warm["timed"]:  # eager, synchronous: the host launches every kernel
        pred = prediction(warm["batches"][idx], graphs=False)
        op_errors.append({"iteration": idx, "measured_ms": measured, "predicted_ms": pred.layers_ms,
                          "ape": abs(pred.layers_ms - measured) / measured})
        for t in timings:  # each op's own span, summed over layers: where the model's error sits
            op_ms.setdefault(t.op, [0.0, 0.0])[0] += t.end_ms - t.start_ms
        for op, ms in pred.busy_ms().items():
            op_ms.setdefault(op, [0.0, 0.0])[1] += ms
    n_timed = max(len(warm["timed"]), 1)
    errors, pred_s = [], 0.0
    replayed = run["replayed"] + [True] * (len(run["batches"]) - len(run["replayed"]))
    for idx, (b, graph) in enumerate(zip(run["batches"], replayed, strict=False)):
        pred = prediction(b, graphs=graph).iteration_ms  # each iteration as it ran: a replay, or eager
        pred_s += pred / 1e3
        measured = run["step_ms"][idx] if idx < len(run["step_ms"]) else None
        if measured:
            errors.append({"iteration": idx, "measured_ms": measured, "predicted_ms": pred, "graph": graph,
                           "ape": abs(pred - measured) / measured})
    measured_tps = total_tokens / run["wall_s"]
    predicted_tps = total_tokens / pred_s
    mean = lambda k, rows=errors: sum(e[k] for e in rows) / len(rows) if rows else None  # noqa: E731
    host, wait = run["host_ms"], run["wait_ms"]
    gpu_s = sum(m for m in run["step_ms"] if m) / 1e3
    return {"label": label, "plan": plan.name, "dense_batch_tokens": tokens,
            "measured": {"total_token_throughput": measured_tps, "duration_s": run["wall_s"],
                         "num_iterations": len(run["batches"]), "mean_forward_ms": mean("measured_ms"),
                         "gpu_s": gpu_s, "host_s": sum(host) / 1e3, "wait_s": sum(wait) / 1e3,
                         # steps that never waited on the GPU: the host, not the GPU, set their pace
                         "host_bound_steps": sum(1 for w in wait if w < HOST_BOUND_WAIT_MS) / max(len(wait), 1),
                         "graphs_captured": run["graphs_captured"],
                         "replayed_iterations": sum(replayed) / max(len(replayed), 1),
                         "warmup_graphs_captured": warm["graphs_captured"]},
            "predicted": {"total_token_throughput": predicted_tps, "duration_s": pred_s,
                          "mean_forward_ms": mean("predicted_ms")},
            "iteration_mape": mean("ape"), "throughput_ape": abs(predicted_tps - measured_tps) / measured_tps,
            "num_compared_iterations": len(errors),
            "iterations": errors[:: max(1, len(errors) // 200)],  # every k-th, at most ~200 kept in the JSON
            "op_timed_mape": mean("ape", op_errors), "op_timed_iterations": op_errors,
            # per op, mean ms per op-timed iteration (all layers): measured spans (CUDA events around each
            # op; a kernel shorter than its host launch shows the launch) against the model's busy time
            "op_timed_ms": {op: {"measured": m / n_timed, "predicted": p / n_timed} for op, (m, p) in op_ms.items()}}
