"""Offline throughput of the engine on one GPU, plans side by side, with the HF transformers peer.

    python scripts/engine_throughput.py --out results/reference/h100/engine-sequential.json
    python scripts/engine_throughput.py --plans sequential,plans/overlap.json --out .../engine-overlap.json

One process, one GPU, one warm engine: the bf16 GEMM peak is measured first (NanoFlow's optimum is
peak / (2 * params)); then each workload runs under each plan (the same weights and KV cache, the plan
switched in place), with every `--time-ops-every`th iteration timed per op by CUDA events. Then the
engine is freed and the HF transformers peer (continuous batching) runs the first `--hf-requests`
requests of the first workload, and the engine's figure on that same subset is measured beside it.
Writes one JSON with the environment; prints a table last.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time

from engine.sizing import DEFAULT_MAX_NUM_BATCHED_TOKENS, DEFAULT_MAX_NUM_SEQS  # the engine's defaults
from nanotune.bench.experiments import make_trace, run_hf, run_one, subset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--plans", default="sequential", help="comma list: 'sequential' or plan JSON paths")
    ap.add_argument("--workloads", default="c1024x512,c512x512,sharegpt", help="comma list of name[:count]")
    ap.add_argument("-n", type=int, default=None, help="requests per workload (default: per workload)")
    ap.add_argument("--max-num-batched-tokens", type=int, default=DEFAULT_MAX_NUM_BATCHED_TOKENS)
    ap.add_argument("--max-num-seqs", type=int, default=DEFAULT_MAX_NUM_SEQS)
    ap.add_argument("--time-ops-every", type=int, default=50)
    ap.add_argument("--hf-requests", type=int, default=64, help="0 skips the HF peer")
    ap.add_argument("--warmups", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compare-sync", action="store_true",
                    help="also run the first workload with async scheduling off (the first plan)")
    ap.add_argument("--device", default="cuda", help="cpu only to check the script itself (tiny model)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import torch

    from engine import EngineConfig, LLMEngine, PipelinePlan
    from nanotune.results import environment, write_json_atomic
    from nanotune.results.peak import peak_flops

    t_start = time.time()
    peak = peak_flops(args.device)
    print(f"peak: {peak.tflops:.0f} TFLOP/s ({peak.label})", flush=True)
    specs = [w.partition(":") for w in args.workloads.split(",")]  # name[:count]
    names = [name for name, _, _ in specs]
    traces = {name: make_trace(name, int(n) if n else args.n, args.seed) for name, _, n in specs}
    out = {"schema": "nanotune.engine-throughput/1", "peak": peak.to_dict(), "workloads": {},
           "command": " ".join(sys.argv), "environment": environment()}
    save = lambda: write_json_atomic(args.out, {**out, "wall_s": time.time() - t_start})
    sub = subset(traces[names[0]], args.hf_requests) if args.hf_requests else None
    if sub is not None:  # the peer first, while the GPU is empty; the engine runs the same subset later
        out["hf_peer"] = {"workload": names[0], "num_requests": args.hf_requests,
                          "hf": run_hf(args.model, sub, peak, args.seed, args.device), "engine": {}}
        print(f"HF peer: {out['hf_peer']['hf']['metrics']['total_token_throughput']:.0f} tok/s", flush=True)
        save()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    engine = LLMEngine(EngineConfig(model=args.model, device=args.device, seed=args.seed,
                                    max_num_batched_tokens=args.max_num_batched_tokens,
                                    max_num_seqs=args.max_num_seqs, time_ops_every=args.time_ops_every))
    info = engine.runner.cache_info
    plans = [PipelinePlan.sequential() if p == "sequential" else PipelinePlan.load(p)
             for p in args.plans.split(",")]
    out.update({"model": engine.model_config.to_dict(), "num_params": engine.model_config.num_params,
                "engine_config": {"max_num_batched_tokens": args.max_num_batched_tokens,
                                  "max_num_seqs": args.max_num_seqs, "block_size": info.block_size,
                                  "num_kv_blocks": info.num_blocks, "kv_cache_tokens": info.num_tokens,
                                  "weights_gib": info.weights_bytes / 2**30,
                                  "load_s": engine.runner.load_seconds},
                "plans": {p.name: p.to_dict() for p in plans}})
    has_gpu = torch.cuda.is_available()
    for w in names:
        trace = traces[w]
        out["workloads"][w] = {"trace": dict(trace.meta), "plans": {}}
        for plan in plans:
            t0 = time.time()
            engine.set_plan(plan)
            capture_s = time.time() - t0
            if has_gpu:
                torch.cuda.reset_peak_memory_stats()
            r = run_one(engine, f"{w}-{plan.name}", trace, peak, args.warmups, args.device)
            r["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30 if has_gpu else None
            r["set_plan_s"] = capture_s
            out["workloads"][w]["plans"][plan.name] = r
            save()
            m = r["metrics"]
            print(f"{w:10s} {plan.name:14s} total {m['total_token_throughput']:9.0f} tok/s  "
                  f"output {m['output_throughput']:8.0f}  eff {m['efficiency']:.3f}  "
                  f"host {r['host_fraction']:.1%}  steps {r['num_steps']}", flush=True)
    if args.compare_sync:  # the same workload and plan with the host in the loop between iterations
        engine.set_plan(plans[0])
        engine.set_async_scheduling(False)
        r = run_one(engine, f"{names[0]}-{plans[0].name}-sync", traces[names[0]], peak, args.warmups, args.device)
        engine.set_async_scheduling(True)
        async_tps = out["workloads"][names[0]]["plans"][plans[0].name]["metrics"]["total_token_throughput"]
        out["sync_scheduling"] = {"workload": names[0], "plan": plans[0].name, **r,
                                  "async_over_sync": async_tps / r["metrics"]["total_token_throughput"]}
        save()
        print(f"async/sync scheduling on {names[0]}: {out['sync_scheduling']['async_over_sync']:.3f}x", flush=True)
    if sub is not None:
        peer = out["hf_peer"]
        hf_tps = peer["hf"]["metrics"]["total_token_throughput"]
        for plan in plans:
            engine.set_plan(plan)
            r = run_one(engine, f"{names[0]}-subset-{plan.name}", sub, peak, 2, args.device)
            peer["engine"][plan.name] = r["metrics"]
        peer["ratio_engine_over_hf"] = {p: v["total_token_throughput"] / hf_tps
                                        for p, v in peer["engine"].items()}
        print(f"engine/HF on {args.hf_requests} requests of {names[0]}: "
              + ", ".join(f"{p} {x:.1f}x" for p, x in peer["ratio_engine_over_hf"].items()), flush=True)
    save()
    print(json.dumps({w: {p: round(v["metrics"]["efficiency"], 4) for p, v in d["plans"].items()}
                      for w, d in out["workloads"].items()}))


if __name__ == "__main__":
    main()
