"""Where one engine step's time goes, host and GPU, and what CUDA graphs would buy for mixed batches.

    python scripts/step_anatomy.py --out results/reference/h200/step-anatomy.json
    python scripts/step_anatomy.py --device cpu --model tiny-llama --workloads sharegpt:16 \
        --out /tmp/a.json                                              # the script itself, on CPU

Part 1 (async scheduling, as bench runs): every workload runs under every plan; each step's host phases
come from the engine's observer records (engine/observe.py: schedule + advance, launch (build inputs,
enqueue the forward or replay a graph, sampling), resolve, wait on the GPU), next to the step's wall time,
composition and whether it replayed a CUDA graph.

Part 2 (synchronous steps): every `--every`th mixed prefill+decode step is run again, after the engine's
own run of it (an observer picks it), three ways over the same shapes: eager launches back to back (host
launch ms, and the GPU's ms per forward from CUDA events: launch gaps included), and the same forward
captured as one CUDA graph and replayed (GPU ms with no launch gaps). A step is rebuilt after it ran, so its
decode rows carry their newest token: the re-runs write other values into those KV slots. Shapes, and so
timings, are those of the step; the run's tokens change (random weights, outputs forced to the trace's
lengths, so the run's shape does not). Steps in which a request finished are skipped (its blocks are free).
Writes JSON with the environment.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from engine.sizing import DEFAULT_MAX_NUM_BATCHED_TOKENS, DEFAULT_MAX_NUM_SEQS  # the engine's defaults
from nanotune.bench.experiments import make_trace

PHASES = ("schedule", "launch", "resolve", "wait", "host")


def part1(engine, trace) -> dict:
    steps = []
    vocab = engine.vocab_size
    for r in trace.requests:
        ids = list(r.prompt_ids) if r.prompt_ids else [1 + i % (vocab - 1) for i in range(r.prompt_len)]
        engine.add_request(ids, _params(r.output_len))
    t_prev = [time.perf_counter()]

    def observe(rec) -> None:  # one record per step, emitted at its end
        now = time.perf_counter()
        steps.append({"tokens": rec.num_tokens, "decode": rec.num_decode, "replayed": rec.replayed,
                      "wall_ms": 1e3 * (now - t_prev[0]),
                      **{f"{k}_ms": round(1e3 * getattr(rec, f"{k}_s"), 3) for k in PHASES}})
        t_prev[0] = now

    engine.add_observer(observe)
    try:
        while engine.has_unfinished():
            engine.step()
    finally:
        engine.remove_observer(observe)
    keys = [f"{k}_ms" for k in PHASES] + ["wall_ms"]
    mixed = [s for s in steps if s["tokens"] > s["decode"] > 0]
    decode_only = [s for s in steps if s["tokens"] == s["decode"] > 0]
    mean = lambda rows, k: round(statistics.fmean(r.get(k, 0.0) for r in rows), 3) if rows else None  # noqa: E731
    share = lambda rows: round(sum(r["replayed"] for r in rows) / len(rows), 4) if rows else None  # noqa: E731
    return {"num_steps": len(steps), "wall_s": round(sum(s["wall_ms"] for s in steps) / 1e3, 3),
            "mixed": {"num_steps": len(mixed), "mean_tokens": mean(mixed, "tokens"),
                      "mean_decode": mean(mixed, "decode"), "replayed": share(mixed),
                      "mean_ms": {k: mean(mixed, k) for k in keys}},
            "decode_only": {"num_steps": len(decode_only), "mean_tokens": mean(decode_only, "tokens"),
                            "replayed": share(decode_only), "mean_ms": {k: mean(decode_only, k) for k in keys}}}


def _params(n):
    from engine import SamplingParams

    return SamplingParams(max_tokens=n, ignore_eos=True)


def measure_batch(runner, batch, repeats: int) -> dict:
    """Eager (back to back) against one captured graph of the same forward, same inputs."""
    import torch

    fb = runner.builder.stage(batch, None, runner.builder.eager_layout(batch))
    fwd = lambda: (runner.executor.forward(fb), runner.model.logits(fb))  # noqa: E731
    launch = []
    for _ in range(3):  # the launch cost alone: each forward starts on an idle GPU, so no queue is full
        torch.cuda.synchronize()
        t = time.perf_counter()
        fwd()
        launch.append(1e3 * (time.perf_counter() - t))
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    t = time.perf_counter()
    for _ in range(repeats):
        fwd()
    loop_host_ms = 1e3 * (time.perf_counter() - t) / repeats  # held back by the GPU once the queue fills
    e1.record()
    torch.cuda.synchronize()
    eager_ms = e0.elapsed_time(e1) / repeats
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fwd()
    g.replay()
    torch.cuda.synchronize()
    e0.record()
    for _ in range(repeats):
        g.replay()
    e1.record()
    torch.cuda.synchronize()
    graph_ms = e0.elapsed_time(e1) / repeats
    del g
    return {"tokens": batch.num_tokens, "decode": batch.num_decode, "host_launch_ms": round(min(launch), 3),
            "loop_host_ms": round(loop_host_ms, 3),
            "eager_gpu_ms": round(eager_ms, 3), "graph_gpu_ms": round(graph_ms, 3),
            "eager_over_graph": round(eager_ms / graph_ms, 4)}


def part2(engine, trace, every: int, limit: int, repeats: int, skip: int) -> list[dict]:
    runner, rows, count = engine.runner, [], [0]

    def observe(rec) -> None:  # synchronous steps: the iteration is done when its record arrives
        b = rec.batch
        if not rec.launched or not b.num_tokens > b.num_decode > 0 or len(rows) >= limit:
            return
        count[0] += 1
        if count[0] > skip and count[0] % every == 0 and not any(s.request.is_finished for s in b.seqs):
            rows.append(measure_batch(runner, b, repeats))
            print(f"  {rows[-1]}", flush=True)

    engine.set_async_scheduling(False)
    engine.add_observer(observe)
    try:
        engine.generate_trace(trace.requests)
    finally:
        engine.remove_observer(observe)
        engine.set_async_scheduling(True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--plans", default="sequential,nb2")
    ap.add_argument("--workloads", default="sharegpt:400,c1024x512:300")
    ap.add_argument("--max-num-batched-tokens", type=int, default=DEFAULT_MAX_NUM_BATCHED_TOKENS)
    ap.add_argument("--max-num-seqs", type=int, default=DEFAULT_MAX_NUM_SEQS)
    ap.add_argument("--every", type=int, default=20, help="part 2: measure every n-th mixed step")
    ap.add_argument("--limit", type=int, default=8, help="part 2: at most this many steps per workload and plan")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--skip", type=int, default=0, help="part 2: mixed steps to let pass first (the ramp-up)")
    ap.add_argument("--warmup", type=int, default=32, help="requests run first, untimed (Triton compiles)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from engine import EngineConfig, LLMEngine
    from engine.plan_library import resolve_plan
    from nanotune.results import environment, write_json_atomic

    engine = LLMEngine(EngineConfig(model=args.model, device=args.device, time_ops_every=0,
                                    max_num_batched_tokens=args.max_num_batched_tokens,
                                    max_num_seqs=args.max_num_seqs))
    out = {"schema": "nanotune.step-anatomy/2", "command": " ".join(sys.argv), "environment": environment(),
           "model": engine.model_config.name, "engine_config": {"max_num_batched_tokens": args.max_num_batched_tokens,
                                                                "max_num_seqs": args.max_num_seqs},
           "runs": {}}
    for spec in args.workloads.split(","):
        name, _, n = spec.partition(":")
        trace = make_trace(name, int(n) if n else None, 0)
        for plan_name in args.plans.split(","):
            engine.set_plan(resolve_plan(plan_name, engine.runner.num_sms))
            engine.generate_trace(list(trace.requests)[: args.warmup])
            run = {"async": part1(engine, trace)}
            print(name, plan_name, run["async"]["mixed"], flush=True)
            if args.device == "cuda":
                run["graph_vs_eager"] = part2(engine, trace, args.every, args.limit, args.repeats, args.skip)
            out["runs"][f"{name}/{plan_name}"] = run
            write_json_atomic(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
