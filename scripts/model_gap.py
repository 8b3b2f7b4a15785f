"""Where the engine falls short of the performance model on one workload: the search's validation (the same
code as `nanotune search --validate`) for one plan only, over a whole offline run of the workload.

    PYTHONPATH=. python scripts/model_gap.py --out DIR                       # H200: llama-3-8b, ShareGPT 800
    PYTHONPATH=. python scripts/model_gap.py --workload constant:1024:512 --out DIR

On the committed H200 profile the scheduler replay predicts 22,978 tok/s for 800 ShareGPT requests,
sequential plan, where power_bound.py measured 16,002 (results/reference/h200/issue16/). The run here holds
every iteration's GPU time (CUDA events) against the model's prediction for that iteration's batch, and keeps
each step's host time and its wait on the GPU: iterations slower than predicted point at kernels (op_timed_ms
says which op), steps that never wait at the host. A warm-up pass over the same lengths (another seed)
compiles and captures first. Writes model_gap.json (search's validation block, the prediction, the
environment). Needs a CUDA GPU; --device cpu runs the code path with a tiny model and a synthetic profile
(tests/test_model_gap_script.py; its numbers mean nothing).
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
    validation = validate_plans([(args.plan, plan, args.max_num_batched_tokens, args.max_num_seqs)], ctx,
                                info["model"], list(ctx.lengths), device=args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "model_gap.json", {
        "schema": "nanotune.model-gap/1", "command": " ".join(sys.argv), "environment": environment(),
        "model": info["model"], "workload": args.workload, "num_requests": len(ctx.lengths), "plan": args.plan,
        "profile": info["profile_source"], "predicted_replay": predicted.summary(), "validation": validation})
    row = validation["plans"][0]
    m, p = row["measured"], row["predicted"]
    print(f"measured {m['total_token_throughput']:,.0f} tok/s in {m['duration_s']:.2f} s "
          f"({m['num_iterations']} iterations, GPU {m['gpu_s']:.2f} s, host {m['host_s']:.2f} s, "
          f"host-bound steps {m['host_bound_steps']:.0%}); predicted {p['total_token_throughput']:,.0f} "
          f"in {p['duration_s']:.2f} s; iteration MAPE {row['iteration_mape']:.1%}")
    print(f"wrote {out / 'model_gap.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
