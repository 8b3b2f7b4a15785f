"""The performance model's predictions for the multi-GPU runs, written down before they run -> JSON.

For each case (model, TP, trace) with a committed reference profile (results/reference/<gpu>/profile-<model>-tp<N>
.json): a short `nanotune search` on that profile, then the sequential plan at the engine's defaults and the
tuned plan, each with its predicted total tokens/s, per GPU, efficiency against optimal (the profile's bf16 peak,
params per GPU = params / TP) and the all-reduce's share of the iteration (busy time of the simulated
all-reduces over the iteration). A case without a reference profile is listed as such, with the command that
records one (a one-GPU profile of the shard: `nanotune profile --model M --tp N`).

    python scripts/tp_predictions.py --out results/reference/h200/tp-predictions.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

CASES = [  # (model, tp, trace): issue 19 (two GPUs), issue 20 (four and eight GPUs)
    ("llama-3-70b", 2, "constant:1024:512"), ("llama-3-70b", 2, "sharegpt"),
    ("llama-3-70b", 4, "constant:1024:512"),
    ("llama-2-70b", 8, "sharegpt"), ("llama-2-70b", 8, "lmsys"), ("llama-2-70b", 8, "splitwise"),
    ("llama-2-70b", 8, "constant:1024:512"),
]


def predict_case(model: str, tp: int, trace: str, gpu: str, n_trials: int, seed: int) -> dict:
    from engine.plan import PipelinePlan
    from nanotune.errors import UserError
    from nanotune.search.objective import evaluate
    from nanotune.search.run import SearchConfig, prepare, search
    from nanotune.search.space import ENGINE_DEFAULT_DENSE_BATCH, ENGINE_DEFAULT_MAX_NUM_SEQS, build_plan

    cfg = SearchConfig(model=model, tp=tp, gpu=gpu, workload=trace, n_trials=n_trials, seed=seed, progress=False,
                       results_dir=tempfile.mkdtemp(prefix="tp-pred-"))
    try:
        ctx, _ = prepare(cfg, log=lambda m: None)
    except UserError as e:
        return {"predicted": False, "why": str(e),
                "record_profile_with": f"nanotune profile --model {model} --tp {tp} (one {gpu} GPU: the shard's ops)"}
    result, _ = search(cfg, log=lambda m: None)
    peak = float(ctx.profile.peaks.get("bf16_tflops")) * 1e12
    optimal = peak / (2 * ctx.shards.params_per_gpu)  # NanoFlow's Eq. 5 with params per GPU

    def figures(ev) -> dict:
        busy = ev.prediction.busy_ms() if ev.prediction is not None else {}
        it = ev.prediction.iteration_ms if ev.prediction is not None else ev.iteration_ms
        return {"plan": ev.plan.name, "dense_batch_tokens": ev.dense_batch_tokens, "max_num_seqs": ev.max_num_seqs,
                "collectives": ev.collectives, "total_token_throughput": ev.throughput,
                "total_token_throughput_per_gpu": ev.throughput / tp, "efficiency": ev.throughput / optimal,
                "iteration_ms": ev.iteration_ms, "allreduce_share_of_iteration": busy.get("all_reduce", 0.0) / it}

    seq = evaluate(ctx, PipelinePlan.sequential(),
                   ENGINE_DEFAULT_DENSE_BATCH, "inline", ENGINE_DEFAULT_MAX_NUM_SEQS)
    p = result["best"]["params"]
    best = evaluate(ctx, build_plan(p, "tuned", ctx.profile.num_sms), p["dense_batch_tokens"],
                    p.get("collectives", "inline"), p.get("max_num_seqs"))
    return {"predicted": True, "profile": ctx.profile.path, "gpu": ctx.profile.gpu_name,
            "optimal_total_token_throughput": optimal, "sequential": figures(seq), "tuned": figures(best),
            "tuned_params": p, "tuned_over_sequential": best.throughput / seq.throughput}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", default="h200")
    ap.add_argument("--n-trials", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from nanotune.results import environment, write_json_atomic

    t0 = time.time()
    out = {"schema": "nanotune.tp-predictions/1", "command": " ".join(sys.argv), "cases": [],
           "note": "performance model (nanotune.search.perfmodel) on committed reference profiles, before any "
                   "multi-GPU run; all-reduce times are the model's estimate (ring, ALLREDUCE_BUS_GB_S), not measured",
           "environment": environment()}
    for model, tp, trace in CASES:
        case = {"model": model, "tp": tp, "trace": trace,
                **predict_case(model, tp, trace, args.gpu, args.n_trials, args.seed)}
        out["cases"].append(case)
        if case["predicted"]:
            print(f"{model} tp {tp} {trace}: sequential {case['sequential']['total_token_throughput']:,.0f} tok/s "
                  f"(eff {case['sequential']['efficiency']:.3f}), tuned {case['tuned']['total_token_throughput']:,.0f}"
                  f" (eff {case['tuned']['efficiency']:.3f}, {case['tuned_over_sequential']:.2f}x)", flush=True)
        else:
            print(f"{model} tp {tp} {trace}: not predicted ({case['why']})", flush=True)
    write_json_atomic(args.out, {**out, "wall_s": time.time() - t0})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
