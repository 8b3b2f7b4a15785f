"""Where the engine falls short of the performance model on one workload: the search's validation (the same
code as `nanotune search --validate`) for one plan only, over a whole offline run of the workload.

    PYTHONPATH=. python scripts/model_gap.py --out DIR                       # H200: llama-3-8b, ShareGPT 800
    PYTHONPATH=. python scripts/model_gap.py --workload constant:1024:512 --no-validate --out DIR

What it found on an H200 is in README ("Measured") and results/reference/h200/issue16/model-gap/.

The run here holds
every iteration's GPU time (CUDA events) against the model's prediction for that iteration's batch, and keeps
each step's host time and its wait on the GPU: iterations slower than predicted point at kernels (op_timed_ms
says which op), steps that never wait at the host. A warm-up pass over the same lengths (another seed)
compiles and captures first. Writes model_gap.json (search's validation block, the prediction, the
environment). Needs a CUDA GPU; --device cpu runs the code path with a tiny model and a synthetic profile
(tests/test_model_gap_script.py; its numbers mean nothing).

Before the validation, `--bench-passes` runs the same requests through `nanotune bench`'s in-process path
(the runner power_bound.py uses) on one fresh engine, pass after pass: the first pass is what a one-shot
`bench` measures (it compiles and captures mixed-step graphs as it meets their buckets), the later ones are
warm. Each pass keeps every step's wall interval, host and wait time, and whether it captured a graph, so the
difference between bench and validation splits into capture cost (cold against warm pass) and harness cost
(warm pass against the validation's measured pass).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from engine.plan_library import resolve_plan
from nanotune.errors import UserError
from nanotune.results import environment, write_json_atomic
from nanotune.search.objective import evaluate
from nanotune.search.run import SearchConfig, prepare
from nanotune.search.space import Infeasible
from nanotune.search.validate import validate_plans


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--gpu", default="h200", help="the committed reference profile to predict with")
    ap.add_argument("--profile", help="a profile file instead of --gpu's")
    ap.add_argument("--workload", default="sharegpt")
    ap.add_argument("-n", "--num-requests", type=int, default=800)
    ap.add_argument("--plan", default="sequential", help="a plan name (engine.plan_library)")
    ap.add_argument("--max-num-batched-tokens", type=int, default=2048)
    ap.add_argument("--max-num-seqs", type=int, default=512)
    ap.add_argument("--gpu-memory-gib", type=float, help="card memory when the profile's GPU is not known")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--bench-passes", type=int, default=2, help="bench in-process passes before the "
                    "validation, on one fresh engine (0: none)")
    ap.add_argument("--no-validate", action="store_true", help="the bench passes only")
    ap.add_argument("--warmups", type=int, default=8, help="bench warm-up requests per pass (as power_bound.py)")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    args = ap.parse_args()
    if not args.out:
        raise SystemExit("give --out DIR (or set $OUT)")

    try:
        return run(args)
    except (UserError, Infeasible) as e:
        print(f"model_gap.py: {e}", file=sys.stderr)
        return 2


def run(args) -> int:
    cfg = SearchConfig(model=args.model, gpu=None if args.profile else args.gpu, profile=args.profile,
                       workload=args.workload, num_requests=args.num_requests, composition="replay",
                       max_num_seqs=args.max_num_seqs, gpu_memory_gib=args.gpu_memory_gib, progress=False)
    ctx, info = prepare(cfg, print)
    plan = resolve_plan(args.plan, ctx.profile.num_sms)
    predicted = evaluate(ctx, plan, args.max_num_batched_tokens, max_num_seqs=args.max_num_seqs)
    print(f"predicted (scheduler replay): {predicted.throughput:,.0f} tok/s", flush=True)
    passes = bench_passes(args, ctx, info["model"], plan) if args.bench_passes > 0 else []
    free_memory()  # the passes' engine, before validation builds its own
    validation = None
    if not args.no_validate:
        validation = validate_plans([(args.plan, plan, args.max_num_batched_tokens, args.max_num_seqs)], ctx,
                                    info["model"], list(ctx.lengths), device=args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "model_gap.json", {
        "schema": "nanotune.model-gap/1", "command": " ".join(sys.argv), "environment": environment(),
        "model": info["model"], "workload": args.workload, "num_requests": len(ctx.lengths), "plan": args.plan,
        "profile": info["profile_source"], "predicted_replay": predicted.summary(), "bench_passes": passes,
        "validation": validation})
    if validation is None:
        print(f"wrote {out / 'model_gap.json'}")
        return 0
    row = validation["plans"][0]
    m, p = row["measured"], row["predicted"]
    print(f"measured {m['total_token_throughput']:,.0f} tok/s in {m['duration_s']:.2f} s "
          f"({m['num_iterations']} iterations, GPU {m['gpu_s']:.2f} s, host {m['host_s']:.2f} s, "
          f"host-bound steps {m['host_bound_steps']:.0%}); predicted {p['total_token_throughput']:,.0f} "
          f"in {p['duration_s']:.2f} s; iteration MAPE {row['iteration_mape']:.1%}")
    print(f"wrote {out / 'model_gap.json'}")
    return 0


def bench_passes(args, ctx, model: str, plan) -> list[dict]:
    """`args.bench_passes` bench runs (in-process, offline) of the workload on one fresh engine; per pass the
    bench's metrics and a per-step breakdown (see the module docstring)."""
    import time

    import workloads
    from engine import EngineConfig, LLMEngine
    from nanotune.bench.experiments import run_one

    trace = workloads.drop_unrunnable(workloads.parse_workload(args.workload, args.num_requests, 0).load(),
                                      ctx.max_model_len)
    engine = LLMEngine(EngineConfig(model=model, device=args.device, max_num_batched_tokens=args.max_num_batched_tokens,
                                    max_num_seqs=args.max_num_seqs, block_size=ctx.block_size,
                                    gpu_memory_fraction=ctx.gpu_memory_fraction, kv_cache_dtype=ctx.kv_cache_dtype))
    engine.set_plan(plan)

    def num_graphs(runner=engine.runner) -> int:  # mixed-step graphs captured so far (engine/mixed_graphs.py)
        mixed = getattr(runner, "mixed_graphs", None)
        return len(mixed.graphs) if mixed is not None else 0

    out = []
    compiles: list[str] = []  # every Triton compile in this process from here on: kernel and specialization
    def on_compile(**kw):  # the kernel, its constexprs and its arguments' specializations (alignment, ...)
        c = kw.get("compile") or {}
        compiles.append(f"{kw.get('repr', '?')} constants={c.get('constants')} attrs={c.get('configs')}")
    previous_hook = set_compile_hook(on_compile)
    for i in range(args.bench_passes):
        steps = []

        def observe(r, steps=steps):  # called at the end of each step, after its launch
            steps.append((time.perf_counter(), r.host_s, r.wait_s, r.replayed, num_graphs(), r.num_tokens,
                          r.num_decode, list(compiles)))
            compiles.clear()
        engine.add_observer(observe)
        try:
            r = run_one(engine, f"{args.workload}-pass{i}", trace, None, args.warmups, args.device)
        finally:
            engine.remove_observer(observe)
        measured = steps[len(steps) - (r["num_steps"] or 0) - 1:]  # the measured phase (and the step before
        # it, for the first interval); the warm-up's steps come first
        row = {"pass": i, "metrics": r["metrics"], "backend": r["backend"], "steps": step_breakdown(measured)}
        out.append(row)
        m, b = r["metrics"], row["steps"]
        print(f"bench pass {i}: {m['total_token_throughput']:,.0f} tok/s in {m['duration']:.2f} s, "
              f"{b['num_steps']} steps, {b['num_capture_steps']} captured a graph "
              f"({b['capture_steps_s']:.2f} s of step intervals), {b['num_compiles']} Triton compiles in "
              f"{b['num_compile_steps']} steps ({b['compile_steps_s']:.2f} s), host {b['host_s']:.2f} s, "
              f"wait {b['wait_s']:.2f} s, host-bound steps {b['host_bound_steps']:.0%}", flush=True)
    engine.close()
    set_compile_hook(previous_hook)
    return out


def set_compile_hook(fn):
    """Set Triton's post-compile hook (triton.knobs, Triton >= 3.4: fn(repr=..., ...) after each JIT compile)
    and return the one it replaces."""
    try:
        from triton import knobs
    except ImportError:  # no Triton, or one without knobs: compiles are not listed
        return None
    previous = knobs.runtime.jit_post_compile_hook
    knobs.runtime.jit_post_compile_hook = fn
    return previous


def free_memory() -> None:
    """A dropped engine's GPU memory back to the allocator (its objects hold cycles) and the driver."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def step_breakdown(steps: list[tuple]) -> dict:
    """Per-step rows (end time, host s, wait s, replayed, graphs so far, tokens, decode rows, Triton compiles
    in it), the first only marking where the second's interval starts -> totals, the steps that captured a
    graph or compiled a kernel (their interval from the step before), and the slowest intervals."""
    from nanotune.search.validate import HOST_BOUND_WAIT_MS

    rows = []
    for k in range(1, len(steps)):
        t, host, wait, replayed, graphs, tokens, decode, compiled = steps[k]
        rows.append({"step": k, "interval_ms": 1e3 * (t - steps[k - 1][0]), "host_ms": 1e3 * host,
                     "wait_ms": 1e3 * wait, "replayed": replayed, "captured": graphs > steps[k - 1][4],
                     "num_tokens": tokens, "num_decode": decode, "compiled": [c[:1500] for c in compiled]})
    cap = [r for r in rows if r["captured"]]
    comp = [r for r in rows if r["compiled"]]
    n = max(len(rows), 1)
    return {"num_steps": len(rows), "host_s": sum(r["host_ms"] for r in rows) / 1e3,
            "wait_s": sum(r["wait_ms"] for r in rows) / 1e3,
            "host_bound_steps": sum(1 for r in rows if r["wait_ms"] < HOST_BOUND_WAIT_MS) / n,
            "intervals_s": sum(r["interval_ms"] for r in rows) / 1e3,
            "num_capture_steps": len(cap), "capture_steps_s": sum(r["interval_ms"] for r in cap) / 1e3,
            "capture_steps": cap[:64],
            "num_compile_steps": len(comp), "num_compiles": sum(len(r["compiled"]) for r in comp),
            "compile_steps_s": sum(r["interval_ms"] for r in comp) / 1e3, "compile_steps": comp[:64],
            "slowest": sorted(rows, key=lambda r: -r["interval_ms"])[:32]}


if __name__ == "__main__":
    sys.exit(main())
