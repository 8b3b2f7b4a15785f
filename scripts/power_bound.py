"""Issue 16's measurement: whole offline runs against Eq. 5's optimum and the power-aware bound, per workload,
KV dtype and plan, in one process on one warm GPU.

    python scripts/power_bound.py --out $OUT                      # H200: 800 requests each
    python scripts/power_bound.py -n 100 --workloads c1024x512,sharegpt --out $OUT   # minutes
    python scripts/power_bound.py --smoke --out /tmp/pb           # CPU, tiny-llama, seconds

First the card's limits: --profile FILE (a profile with a power section), else `nanotune profile --quick
--power-only` measured here (about a minute on a GPU). Then the GEMM peak (Eq. 5). Then, per KV dtype (fp8
only where EngineConfig has kv_cache_dtype; else recorded as not available), one engine, and per workload
every plan in --plans: total tokens/s, Eq. 5 efficiency, the bound (results.bound: with and without the
measured concurrency) and the efficiency against it, and the best non-sequential plan over sequential.
Writes power-bound.json (with the environment) and power-bound.png into --out (default $OUT).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import sys
import time
from pathlib import Path

from nanotune.bench.experiments import WORKLOADS, make_trace

DEFAULT_WORKLOADS = "c1024x512,c512x1024,sharegpt,lmsys,splitwise"  # names of nanotune.bench.experiments
SMOKE_CAPS = (48, 12)  # prompt, output caps of the CPU check


def kv_dtypes_available() -> tuple[bool, str | None]:
    from engine import EngineConfig

    if "kv_cache_dtype" in {f.name for f in dataclasses.fields(EngineConfig)}:
        return True, None
    return False, "not available: EngineConfig has no kv_cache_dtype"


def load_rates(args, out_dir: Path) -> tuple[object, str]:
    """(results.bound.Rates, where the profile came from)."""
    from nanotune.profile.run import ProfileOptions, run_profile
    from nanotune.profile.schema import load_profile
    from nanotune.results.bound import rates_from_profile

    if args.profile:
        return rates_from_profile(load_profile(args.profile), args.profile), args.profile
    print("measuring the card's power-aware limits (profile --quick --power-only) ...", flush=True)
    model = "tiny-llama-micro" if args.device == "cpu" else args.model
    profile, run_dir = run_profile(ProfileOptions(model=model, quick=True, device=args.device, plots=False,
                                                  out=str(out_dir / "profile-power.json"), progress=False,
                                                  sections=("power",)))
    path = str(out_dir / "profile-power.json")
    return rates_from_profile(profile, path), path


def run_one(engine, label: str, trace, peak, bound, warmups: int, device: str, caps) -> dict:
    from nanotune.bench.backends.inprocess import EngineBackend
    from nanotune.bench.config import BenchConfig
    from nanotune.bench.runner import run_bench

    cfg = BenchConfig(trace=label, engine="nanoflow", model=engine.model_config.name, device=device,
                      num_warmups=warmups, caps=caps)
    backend = EngineBackend(engine, name=label, info={"plan": engine.runner.plan.name})
    try:
        res = run_bench(cfg, trace, backend, peak, bound=bound).result
    finally:
        backend.close()  # unregisters its step observer from the engine, which the next run reuses
    m = res["metrics"]
    run = res["points"][-1]["runs"][-1]
    keep = ("completed", "failed", "duration", "total_input_tokens", "total_output_tokens",
            "total_token_throughput", "output_throughput", "optimal_total_token_throughput", "efficiency",
            "bound_total_token_throughput", "efficiency_vs_bound", "mean_tpot_ms")
    b = run.get("bound") or {}
    return {"metrics": {k: m.get(k) for k in keep},
            "bound_sequential_total_token_throughput": b.get("bound_sequential_total_token_throughput"),
            "bound": b, "partial": res["partial"], "error": res["error"],
            "num_steps": (run.get("backend") or {}).get("num_steps")}


def figure(out: dict, path: Path) -> Path | None:
    from nanotune.report.bound_plot import optimal_bound_achieved

    rows = []
    for kv, d in out["kv"].items():
        for w, plans in (d.get("workloads") or {}).items():
            for plan, r in plans["plans"].items():
                rows.append({"engine": f"{w} {plan}", "model": f"KV {kv}", "gpu": "", **r["metrics"]})
    gpu = out["environment"].get("gpu") or "cpu"
    return optimal_bound_achieved(rows, path, title=f"{out['model']} on {gpu}: achieved vs bound vs Eq. 5")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--workloads", default=DEFAULT_WORKLOADS, help="comma list of name[:count], names: "
                                                                     + ", ".join(WORKLOADS))
    ap.add_argument("-n", type=int, default=800, help="requests per workload (name:count overrides)")
    ap.add_argument("--kv-dtypes", default="bf16,fp8")
    ap.add_argument("--plans", default="sequential,nb2", help="plan names (engine.plan_library) or JSON files")
    ap.add_argument("--profile", help="a profile with a power section [default: measure one here]")
    ap.add_argument("--warmups", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--smoke", action="store_true", help="CPU check: tiny-llama, 3 requests, short lengths")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="output directory [default: $OUT]")
    args = ap.parse_args()
    if not args.out:
        ap.error("--out DIR (or $OUT) is required")
    if args.smoke:
        args.device, args.model, args.n, args.warmups = "cpu", "tiny-llama", min(args.n, 3), min(args.warmups, 1)
    out = run(args)
    bad = [f"KV {kv} {w} {plan}: {r['error'] or str(r['metrics']['failed']) + ' requests failed'}"
           for kv, d in out["kv"].items() for w, e in (d.get("workloads") or {}).items()
           for plan, r in e["plans"].items() if r["error"] or r["metrics"].get("failed")]
    if bad:  # a run that failed is recorded in the JSON, and the script says so and exits 1
        raise SystemExit("power_bound: " + "; ".join(bad))


def run(args) -> dict:
    import torch

    from engine import EngineConfig, LLMEngine
    from engine.plan_library import resolve_plan
    from engine.presets import get_preset
    from nanotune.bench.bound import BoundSetup
    from nanotune.bench.requests import LengthCaps
    from nanotune.profile.ops import shard
    from nanotune.results import environment, write_json_atomic
    from nanotune.results.peak import peak_flops

    t_start = time.time()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rates, source = load_rates(args, out_dir)
    print(f"rates: GEMM {rates.gemm_flops_per_s / 1e12:.4g} TFLOP/s, HBM read {rates.read_bytes_per_s / 1e12:.4g} "
          f"TB/s, together {rates.overlap}", flush=True)
    peak = peak_flops(args.device)
    print(f"peak (Eq. 5): {peak.tflops:.4g} TFLOP/s", flush=True)
    caps = LengthCaps(*SMOKE_CAPS) if args.smoke else LengthCaps()
    specs = [w.partition(":") for w in args.workloads.split(",") if w]
    for name, _, _ in specs:
        if name not in WORKLOADS:
            raise SystemExit(f"--workloads: unknown '{name}' (known: {', '.join(WORKLOADS)})")
    traces = {name: make_trace(name, int(n) if n else args.n, args.seed) for name, _, n in specs}
    has_fp8, why_fp8 = kv_dtypes_available()
    sh = shard(get_preset(args.model), 1)
    out = {"schema": "nanotune.power-bound/1", "model": args.model, "rates": rates.to_dict(), "profile": source,
           "peak": peak.to_dict(), "smoke": args.smoke, "kv": {}, "command": " ".join(sys.argv),
           "environment": environment()}
    save = lambda: write_json_atomic(out_dir / "power-bound.json", {**out, "wall_s": time.time() - t_start})
    for kv in args.kv_dtypes.split(","):
        if kv == "fp8" and not has_fp8:
            out["kv"][kv] = {"available": False, "why": why_fp8}
            print(f"KV {kv}: {why_fp8}", flush=True)
            continue
        extra = {"kv_cache_dtype": {"bf16": "bfloat16"}.get(kv, kv)} if has_fp8 else {}  # the engine's name
        engine = LLMEngine(EngineConfig(model=args.model, device=args.device, seed=args.seed, **extra))
        num_sms = torch.cuda.get_device_properties(0).multi_processor_count if torch.cuda.is_available() else None
        plans = [resolve_plan(p, num_sms) for p in args.plans.split(",")]
        bound = BoundSetup(rates, sh, kv)
        out["kv"][kv] = {"available": True, "workloads": {}}
        for w, trace in traces.items():
            entry = out["kv"][kv]["workloads"][w] = {"trace": dict(trace.meta), "plans": {}}
            for plan in plans:
                engine.set_plan(plan)
                r = run_one(engine, f"{w}-{plan.name}-{kv}", trace, peak, bound, args.warmups, args.device, caps)
                entry["plans"][plan.name] = r
                m = r["metrics"]
                print(f"KV {kv:4s} {w:10s} {plan.name:12s} {m['total_token_throughput']:10,.0f} tok/s  "
                      f"Eq.5 {m['efficiency']:.3f}  bound {m['bound_total_token_throughput'] or 0:10,.0f}  "
                      f"vs bound {m['efficiency_vs_bound'] or 0:.3f}  ({time.time() - t_start:.0f} s)", flush=True)
                save()
            entry["best_vs_sequential"] = best_vs_sequential(entry["plans"])
        del engine
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    fig = figure(out, out_dir / "power-bound.png")
    out["figure"] = fig.name if fig else None
    save()
    print(f"wrote {out_dir / 'power-bound.json'}" + (f" and {fig}" if fig else ""), flush=True)
    return out


def best_vs_sequential(plans: dict) -> dict | None:
    """The best plan other than sequential, and its total tokens/s over sequential's."""
    seq = (plans.get("sequential") or {}).get("metrics", {}).get("total_token_throughput")
    others = {k: v["metrics"]["total_token_throughput"] for k, v in plans.items() if k != "sequential"
              and v["metrics"].get("total_token_throughput")}
    if not seq or not others:
        return None
    best = max(others, key=others.get)
    return {"plan": best, "ratio": others[best] / seq}


if __name__ == "__main__":
    main()
