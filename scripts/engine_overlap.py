"""Issue 4, end to end: overlapped nano-batch plans against the sequential plan, one warm engine, one GPU.

    python scripts/engine_overlap.py --plans sequential,nb2-cublas-sm33 \
        --out results/reference/h200/engine-overlap.json [--probe .../partition-probe.json]
    python scripts/engine_overlap.py --device cpu --model tiny-llama \
        --workloads c512x512:8 --plans sequential,nb2 --out /tmp/o.json          # the script itself, on CPU

Every workload runs under every plan (same weights and KV cache, plan switched in place; plan names as
engine.plan_library.resolve_plan takes them: names or plan JSON paths). A plan written NAME@eager-mixed runs
its mixed prefill+decode steps eagerly (no mixed CUDA graphs), the engine as it was before them;
NAME@min-uses-N captures a mixed bucket on its Nth use instead of engine.mixed_graphs.MIN_USES.
The first plan is the baseline: each other plan's ratio is its total token throughput over the baseline's
on the same trace in the same run.
Every `--time-ops-every`th iteration is timed per op by CUDA events; for `--gantt-workload` the sampled
iteration nearest the baseline's median composition is drawn per plan, ops on their streams over time.
The micro-pair result of a partition probe (results/reference/h200/partition-probe.json) can be folded in
with --probe. Writes one JSON with the
environment (incrementally, so an interrupted run keeps what it measured) and the Gantt figure beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from engine.sizing import DEFAULT_MAX_NUM_BATCHED_TOKENS, DEFAULT_MAX_NUM_SEQS  # the engine's defaults
from nanotune.bench.experiments import make_trace, run_one

EAGER_MIXED = "@eager-mixed"
MIN_USES = "@min-uses-"
DEFAULT_WORKLOADS = "c1024x512:600,c512x512:700,c512x1024:400,sharegpt:1000,lmsys:1500,splitwise:400"


def pick_sample(samples, target: tuple[float, float]):
    """The sampled iteration (tokens, decode seqs, timings) closest to a target composition."""
    if not samples:
        return None
    return min(samples, key=lambda s: abs(s[0] - target[0]) / max(target[0], 1) + abs(s[1] - target[1])
               / max(target[1], 1))


def timeline(sample) -> dict:
    tokens, decode, timings = sample
    t0 = min(t.start_ms for t in timings)
    return {"num_tokens": tokens, "num_decode": decode,
            "forward_ms": round(max(t.end_ms for t in timings) - t0, 4),
            "timings": [{"layer": t.layer, "index": t.index, "op": t.op, "stream": t.stream,
                         "start_ms": round(t.start_ms - t0, 4), "end_ms": round(t.end_ms - t0, 4)} for t in timings]}


def draw_gantt(path: Path, gantts: dict, title: str) -> None:
    from nanotune.search.plots import GANTT_LAYERS, bars_from_timings, gantt

    mid = max(0, max(t["layer"] for g in gantts.values() for t in g["timings"]) // 2)
    panels = []
    for plan, g in gantts.items():  # two middle layers: the steady pattern, not the first layer's start
        rows = [{**t, "layer": t["layer"] - mid} for t in g["timings"] if t["layer"] >= mid]
        panels.append((f"{plan}: {g['num_tokens']} tokens ({g['num_decode']} decode), whole forward "
                       f"{g['forward_ms']:.2f} ms; layers {mid}-{mid + GANTT_LAYERS - 1} shown",
                       bars_from_timings(rows)))
    gantt(path, panels, title, ["stream 0 (GEMMs, norms)", "stream 1 (attention)"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--plans", default="sequential,nb2-cublas-sm33", help="comma list; the first is the baseline")
    ap.add_argument("--workloads", default=DEFAULT_WORKLOADS, help="comma list of name[:count]")
    ap.add_argument("--gantt-workload", default="c1024x512")
    ap.add_argument("--max-num-batched-tokens", type=int, default=DEFAULT_MAX_NUM_BATCHED_TOKENS)
    ap.add_argument("--max-num-seqs", type=int, default=DEFAULT_MAX_NUM_SEQS)
    ap.add_argument("--time-ops-every", type=int, default=40)
    ap.add_argument("--warmups", type=int, default=8)
    ap.add_argument("--prewarm", type=int, default=0,
                    help="run each workload's first N requests under every plan first, unmeasured, so no plan "
                         "pays Triton compiles (a fresh machine's first plan otherwise does)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--probe", default=None, help="partition-probe JSON whose micro pair to include")
    ap.add_argument("--resume-from", default=None,
                    help="an earlier engine_overlap JSON with the same plans: keep its workloads, run the rest")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import torch

    from engine import EngineConfig, LLMEngine
    from engine.observe import OpProfile
    from engine.plan_library import resolve_plan
    from nanotune.results import environment, write_json_atomic
    from nanotune.results.peak import peak_flops

    t_start = time.time()
    peak = peak_flops(args.device)
    engine = LLMEngine(EngineConfig(model=args.model, device=args.device, seed=args.seed,
                                    max_num_batched_tokens=args.max_num_batched_tokens,
                                    max_num_seqs=args.max_num_seqs, time_ops_every=args.time_ops_every))
    num_sms = engine.runner.num_sms or 132
    labels = args.plans.split(",")
    plans = [resolve_plan(p.removesuffix(EAGER_MIXED).split(MIN_USES)[0], num_sms) for p in labels]
    base = labels[0]
    out = {"schema": "nanotune.engine-overlap/1", "command": " ".join(sys.argv), "environment": environment(),
           "peak": peak.to_dict(), "model": engine.model_config.name, "baseline": base,
           "engine_config": {"max_num_batched_tokens": args.max_num_batched_tokens,
                             "max_num_seqs": args.max_num_seqs,
                             "kv_cache_tokens": engine.runner.cache_info.num_tokens},
           "plans": {lb: p.to_dict() for lb, p in zip(labels, plans, strict=True)},
           "workloads": {}, "ratios": {}, "gantt": {}}
    if args.probe and Path(args.probe).is_file():
        probe = json.loads(Path(args.probe).read_text())
        out["micro_pair"] = probe.get("micro_pair")
    if args.resume_from:  # workloads measured by an earlier call (each workload's ratio is within one run)
        prev = json.loads(Path(args.resume_from).read_text())
        if list(prev["plans"]) != list(out["plans"]):
            raise SystemExit(f"{args.resume_from}: plans {list(prev['plans'])} differ from {list(out['plans'])}")
        out["workloads"], out["ratios"], out["gantt"] = prev["workloads"], prev["ratios"], prev.get("gantt", {})
        out["earlier_runs"] = prev.get("earlier_runs", []) + [{k: prev.get(k) for k in
                                                               ("command", "environment", "peak", "wall_s")}]
    save = lambda: write_json_atomic(args.out, {**out, "wall_s": round(time.time() - t_start, 1)})  # noqa: E731
    for spec in args.workloads.split(","):
        name, _, n = spec.partition(":")
        if name in out["workloads"]:
            continue
        trace = make_trace(name, int(n) if n else None, args.seed)
        runs = out["workloads"][name] = {"trace": dict(trace.meta), "plans": {}}
        samples = {}
        for plan in plans if args.prewarm else []:
            engine.set_plan(plan)
            engine.generate_trace(list(trace.requests)[: args.prewarm])
        for label, plan in zip(labels, plans, strict=True):
            engine.set_plan(plan)
            if label.endswith(EAGER_MIXED):
                engine.runner.mixed_graphs = None
            elif MIN_USES in label and engine.runner.mixed_graphs is not None:
                engine.runner.mixed_graphs.min_uses = int(label.split(MIN_USES)[1])
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            profile = OpProfile()
            r = run_one(engine, f"{name}-{label}", trace, peak, args.warmups, args.device, profile)
            mixed = engine.runner.mixed_graphs
            r["mixed_graphs"] = None if mixed is None else {"captured": len(mixed.graphs),
                                                            "replays": mixed.num_replays,
                                                            "min_uses": mixed.min_uses}
            r.pop("backend", None)
            runs["plans"][label] = r
            samples[label] = profile.samples
            m = r["metrics"]
            print(f"{name:10s} {label:26s} {m['total_token_throughput']:9.0f} tok/s  eff {m['efficiency']:.3f}"
                  f"  host {r['host_fraction'] or 0:.1%}", flush=True)
            save()
        tps = {p: v["metrics"]["total_token_throughput"] for p, v in runs["plans"].items()}
        out["ratios"][name] = {p: round(v / tps[base], 4) for p, v in tps.items()}
        if name == args.gantt_workload and samples.get(base):
            # an iteration that mixes prefill and decode (where GEMMs and attention can overlap; decode-only
            # iterations replay CUDA graphs, which are not timed per op), nearest the mean of such iterations
            mixed = {p: [x for x in s if x[0] > x[1] > 0] or s for p, s in samples.items()}
            target = (statistics.fmean(x[0] for x in mixed[base]), statistics.fmean(x[1] for x in mixed[base]))
            out["gantt"] = {"workload": name, "target_composition": target,
                            "plans": {p: timeline(pick_sample(s, target)) for p, s in mixed.items() if s}}
        save()
    if out["gantt"].get("plans"):
        fig = Path(args.out).with_suffix(".png")
        draw_gantt(fig, out["gantt"]["plans"], f"{out['model']}, {out['gantt']['workload']}: one iteration per plan "
                                               f"(CUDA events) on {peak.label}")
        out["gantt"]["figure"] = fig.name
    save()
    print(json.dumps(out["ratios"], indent=1))


if __name__ == "__main__":
    main()
