"""Does `nanotune search`'s performance model rank plans the way the engine does? Checked on CPU against a
measured scripts/engine_overlap.py run.

    python scripts/model_check.py results/reference/h200/engine-overlap.json \
        --profile results/reference/h200/profile-llama-3-8b-tp1.json \
        --out results/reference/h200/search-model-check.json
    python scripts/model_check.py RUN_A.json RUN_B.json:c1024x512 --plans sequential,nb2 ...

Several runs may be pooled; RUN.json:W1+W2 takes only those workloads of a run, --plans only those plan
labels (the first is each workload's baseline).

For every workload and plan of the run: the same trace (same generator, count and seed), replayed through
the engine's scheduler at the run's limits, each iteration's composition predicted from the profile
(composition "replay", as `search --composition replay`), against the measured total token throughput.
Reports each prediction's error, the model's MAPE, and per workload whether the model picks the plan that
measured fastest and how far off its predicted ratio is. No GPU needed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nanotune.bench.experiments import make_trace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="engine_overlap.py JSON[:workload+workload]")
    ap.add_argument("--plans", default=None, help="comma list of plan labels to check (default: all of each run)")
    ap.add_argument("--profile", required=True, help="the profile JSON the model reads")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from engine.plan import PipelinePlan
    from engine.presets import get_preset
    from engine.sizing import resolve_max_model_len
    from nanotune.profile.ops import Shard
    from nanotune.results import write_json_atomic
    from nanotune.search.capacity import WorkloadStats, gpu_memory_gib
    from nanotune.search.objective import SearchContext, evaluate
    from nanotune.search.profiledata import load_profile

    profile = load_profile(args.profile)
    memory = gpu_memory_gib(profile.gpu_name, profile.data.get("gpu"))
    rows, picks = [], {}
    for spec in args.runs:
        path, _, only = spec.partition(":")
        run = json.loads(Path(path).read_text())
        labels = args.plans.split(",") if args.plans else list(run["plans"])
        plans = {lb: PipelinePlan.from_dict(run["plans"][lb], where=f"{path}: plans.{lb}") for lb in labels}
        limits = run["engine_config"]
        max_model_len = resolve_max_model_len(get_preset(run["model"]))
        for name, w in run["workloads"].items():
            if only and name not in only.split("+"):
                continue
            meta = w["trace"]
            trace = make_trace(name, int(meta["count"]), int(meta.get("seed", 0)))
            lengths = [(int(r.prompt_len), int(r.output_len)) for r in trace.requests]
            ctx = SearchContext(profile, WorkloadStats.of(*zip(*lengths, strict=True)), Shard.of(profile.shapes),
                                memory, max_num_seqs=limits["max_num_seqs"], max_model_len=max_model_len,
                                composition="replay", lengths=lengths)
            pred = {}
            for pname, plan in plans.items():
                ev = evaluate(ctx, plan, limits["max_num_batched_tokens"], max_num_seqs=limits["max_num_seqs"])
                measured = w["plans"][pname]["metrics"]["total_token_throughput"]
                pred[pname] = ev.throughput
                rows.append({"run": path, "workload": name, "plan": pname, "predicted": round(ev.throughput, 1),
                             "measured": round(measured, 1), "error": round(ev.throughput / measured - 1, 4)})
            measured = {p: w["plans"][p]["metrics"]["total_token_throughput"] for p in plans}
            base = labels[0]
            picks[name] = {"model_pick": max(pred, key=pred.get), "measured_best": max(measured, key=measured.get),
                           "predicted_ratio": {p: round(pred[p] / pred[base], 4) for p in plans},
                           "measured_ratio": {p: round(measured[p] / measured[base], 4) for p in plans}}
            picks[name]["agrees"] = picks[name]["model_pick"] == picks[name]["measured_best"]
            print(f"{name:10s} " + "  ".join(f"{r['plan']}: pred {r['predicted']:8.0f} meas {r['measured']:8.0f} "
                                              f"({r['error']:+.1%})" for r in rows if r["workload"] == name)
                  + f"  pick ok: {picks[name]['agrees']}", flush=True)
    mape = sum(abs(r["error"]) for r in rows) / len(rows)
    res = {"kind": "search_model_check", "runs": args.runs, "plans": args.plans, "profile": args.profile,
           "gpu": profile.gpu_name, "composition": "replay", "rows": rows, "workloads": picks,
           "throughput_mape": round(mape, 4),
           "plans_ranked_right": sum(p["agrees"] for p in picks.values()), "num_workloads": len(picks)}
    print(f"throughput MAPE {mape:.1%}; best plan picked on {res['plans_ranked_right']}/{len(picks)} workloads")
    if args.out:
        write_json_atomic(args.out, res)


if __name__ == "__main__":
    main()
