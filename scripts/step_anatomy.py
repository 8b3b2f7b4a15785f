"""Where one engine step's time goes, host and GPU, and what CUDA graphs would buy for mixed batches.

    PYTHONPATH=. python scripts/step_anatomy.py --out results/reference/h200/step-anatomy.json
    PYTHONPATH=. python scripts/step_anatomy.py --device cpu --model tiny-llama --workloads sharegpt:16 \
        --out /tmp/a.json                                              # the script itself, on CPU

Part 1 (async scheduling, as bench runs): every workload runs under every plan with the host phases of each
step timed by wrapping the engine's own methods (schedule, build inputs, launch the forward, logits,
sampling, graph replay, advance, resolve), next to the step's wall time and composition.

Part 2 (synchronous steps): every `--every`th mixed prefill+decode step is run again, after the engine's
own run of it, three ways over the same inputs: eager launches back to back (host launch ms, and the GPU's
ms per forward from CUDA events: launch gaps included), and the same forward captured as one CUDA graph
and replayed (GPU ms with no launch gaps). Re-running a step rewrites the same KV slots with the same
values, so the run itself is unchanged. Writes JSON with the environment.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine_throughput import make_trace  # noqa: E402

PHASES = {"scheduler": ("schedule", "advance", "resolve"), "builder": ("build",),
          "executor": ("forward",), "model": ("logits",), "sampler": ("sample",), "graphs": ("run",)}


def wrap_phases(engine, acc: dict) -> list:
    """Time the engine's host phases (perf_counter) into acc[name] (ms summed over the current step).
    -> the (object, method name) pairs wrapped, for unwrap()."""
    owners = {"scheduler": engine.scheduler, "builder": engine.runner.builder,
              "executor": engine.runner.executor, "model": engine.runner.model,
              "sampler": engine.runner.sampler, "graphs": engine.runner.graphs}
    wrapped = []
    for owner, names in PHASES.items():
        obj = owners[owner]
        for name in names:
            if obj is None:
                continue
            fn = getattr(obj, name)

            def timed(*a, _fn=fn, _key=f"{owner}.{name}", **k):
                t = time.perf_counter()
                try:
                    return _fn(*a, **k)
                finally:
                    acc[_key] += 1e3 * (time.perf_counter() - t)

            setattr(obj, name, timed)  # an instance attribute over the class's method
            wrapped.append((obj, name))
    return wrapped


def unwrap(wrapped: list) -> None:
    for obj, name in wrapped:
        delattr(obj, name)


def part1(engine, trace) -> dict:
    steps = []
    acc = defaultdict(float)
    wrapped = wrap_phases(engine, acc)
    vocab = engine.vocab_size
    for r in trace.requests:
        ids = list(r.prompt_ids) if r.prompt_ids else [1 + i % (vocab - 1) for i in range(r.prompt_len)]
        engine.add_request(ids, _params(r.output_len))
    t_prev = time.perf_counter()
    while engine.has_unfinished():
        acc.clear()
        engine.step()
        now = time.perf_counter()
        s = engine.last_step
        steps.append({"tokens": s.num_tokens, "decode": s.num_decode, "wall_ms": 1e3 * (now - t_prev),
                      "host_ms": 1e3 * s.host_s, "wait_ms": 1e3 * s.wait_s, **{k: round(v, 3) for k, v in acc.items()}})
        t_prev = now
    unwrap(wrapped)
    keys = sorted({k for s in steps for k in s} - {"tokens", "decode"})
    mixed = [s for s in steps if s["tokens"] > s["decode"] > 0]
    decode_only = [s for s in steps if s["tokens"] == s["decode"] > 0]
    mean = lambda rows, k: round(statistics.fmean(r.get(k, 0.0) for r in rows), 3) if rows else None  # noqa: E731
    return {"num_steps": len(steps), "wall_s": round(sum(s["wall_ms"] for s in steps) / 1e3, 3),
            "mixed": {"num_steps": len(mixed), "mean_tokens": mean(mixed, "tokens"),
                      "mean_decode": mean(mixed, "decode"), "mean_ms": {k: mean(mixed, k) for k in keys}},
            "decode_only": {"num_steps": len(decode_only), "mean_tokens": mean(decode_only, "tokens"),
                            "mean_ms": {k: mean(decode_only, k) for k in keys}}}


def _params(n):
    from engine import SamplingParams

    return SamplingParams(max_tokens=n, ignore_eos=True)


def measure_batch(runner, batch, repeats: int) -> dict:
    """Eager (back to back) against one captured graph of the same forward, same inputs."""
    import torch

    fb = runner.builder.build(batch)
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
    launch = runner.launch

    def hooked(batch, prev=None, timings=None):
        h = launch(batch, prev, timings)
        if batch.num_tokens > batch.num_decode > 0 and len(rows) < limit:
            count[0] += 1
            if count[0] > skip and count[0] % every == 0:
                h.sampled()  # this step is done: its inputs rebuild exactly (no pending tokens)
                rows.append(measure_batch(runner, batch, repeats))
                print(f"  {rows[-1]}", flush=True)
        return h

    runner.launch = hooked
    old = engine.config
    engine.config = old.replace(async_scheduling=False)
    try:
        engine.generate_trace(trace.requests)
    finally:
        engine.config = old
        del runner.launch
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--plans", default="sequential,nb2")
    ap.add_argument("--workloads", default="sharegpt:400,c1024x512:300")
    ap.add_argument("--max-num-batched-tokens", type=int, default=2048)
    ap.add_argument("--max-num-seqs", type=int, default=512)
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
    out = {"schema": "nanotune.step-anatomy/1", "command": " ".join(sys.argv), "environment": environment(),
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
