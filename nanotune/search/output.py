"""Writing a search run to results/<run-id>/: the tuned config (plan + engine limits, engine.tuned; what
`nanotune bench --plan` and EngineConfig(plan=...) take), the Pareto plans, a copy of the study (sqlite) and its trials
as CSV, plots, and result.json last (atomically), so a result.json that exists has its files beside it."""

from __future__ import annotations

import time
from pathlib import Path

from nanotune.results import write_json_atomic
from nanotune.search import perfmodel, profiledata
from nanotune.search.perfmodel import BatchShape, predict
from nanotune.search.plots import bars_from_prediction, bars_from_timings, gantt, study_plots

SCHEMA = "nanotune.search/1"
TUNED_FILE = "tuned.json"
MAX_PARETO_PLANS = 8


def _launch_note(profile) -> str:
    gap = perfmodel.launch_gap(profile, True)
    host = profile.host_launch_ms()
    if profile.launch_gap_ms("graph") is None:
        return (f"launch gap: every iteration is taken as a CUDA-graph replay (the engine's default), "
                f"{1e3 * gap:g} us between kernels (the profile has no launch section; eager: "
                f"{1e3 * perfmodel.LAUNCH_GAP_MS:g} us)")
    eager = "" if host is None else f"; eager iterations: the host launches each kernel in {1e3 * host:.1f} us"
    return (f"launch gap: every iteration is taken as a CUDA-graph replay (the engine's default), "
            f"{1e3 * gap:+.2f} us per kernel against its alone time, measured by the profile{eager}")


def _sustained_note(profile) -> str:
    pts = (profile.data.get("sustained") or {}).get("points", [])
    if not pts:
        return "sustained load: not measured by the profile; alone times taken as they are (boost clock)"
    return ("sustained load: alone times scaled by the profile's busy-card factors (a layer replayed for "
            "seconds against the sum of its ops alone), " +
            ", ".join(f"{b}-bound x{f:.3f}" for b, f in sorted(profile.sustained_factors().items())))


def model_notes(ctx, composition: str) -> list[str]:
    """The model's assumptions, written into every result so a reader knows what was and was not measured."""
    notes = [
        "interference: each measured pair's spans (both started together) are turned into each op's slowdown "
        "while overlapped; the simulation stretches ops only while they overlap",
        _launch_note(ctx.profile),
        _sustained_note(ctx.profile),
        f"interference: pairs the profile did not measure (same ops or same kinds) take a slowdown of "
        f"{profiledata.DEFAULT_SLOWDOWN} each: overlap gains nothing over back to back (plain-stream pairs "
        f"measured about that on an H200); collectives "
        + ("from the profile's all-reduce beside a GEMM" if any(p.get("together_ms") for p in
                                                                ctx.profile.allreduce_points)
           else str(profiledata.DEFAULT_COMM_SLOWDOWN)),
        "lm_head + sampling: estimated from the profile's peaks (not a layer op; not profiled)",
        "not modelled: host time (async scheduling overlaps it with the GPU; validation reports the share of "
        "steps it paced), stream priorities",
    ]
    if composition == "steady":
        notes.append("batch composition: the steady state of an endless supply of the workload's requests; a "
                     "finite offline run also ramps up and drains (validation replays the real scheduler)")
    if ctx.tp > 1:
        how = (f"interpolated from the profile's all-reduce over {ctx.tp} real ranks "
               f"({len(ctx.profile.allreduce_curve)} message sizes)" if ctx.profile.allreduce_curve else
               f"estimated as a ring over {perfmodel.ALLREDUCE_BUS_GB_S:g} GB/s (this profile did not time it: "
               "it ran without the ranks' GPUs)")
        notes.append(f"TP {ctx.tp}: all-reduce after o_proj and down {how}; the tuned plan runs each all-reduce "
                     "right after its GEMM (the modelled placement is in its meta)")
    return notes


def save_plans(run_dir: Path, best, pareto: list) -> dict:
    """tuned.json (the tuned plan with its engine limits, engine.tuned.TunedConfig: what `bench --plan`
    reads) and, for two objectives, plans/pareto-<trial>.json (tuned configs too)."""
    best.save(run_dir / TUNED_FILE)
    files = {"plan": TUNED_FILE}
    if pareto:
        (run_dir / "plans").mkdir(exist_ok=True)
        for trial, tuned in pareto[:MAX_PARETO_PLANS]:
            tuned.save(run_dir / "plans" / f"pareto-{trial}.json")
        files["pareto"] = [f"plans/pareto-{t}.json" for t, _ in pareto[:MAX_PARETO_PLANS]]
    return files


def save_study(study, storage: str, run_dir: Path) -> dict:
    """A copy of the study in the run directory (any storage -> sqlite) and its trials as CSV."""
    import optuna

    db = run_dir / "study.db"
    optuna.copy_study(from_study_name=study.study_name, from_storage=storage,
                      to_storage=f"sqlite:///{db}")
    study.trials_dataframe().to_csv(run_dir / "trials.csv", index=False)
    return {"study": db.name, "trials": "trials.csv"}


def save_plots(study, run_dir: Path, objective: str, best_eval, profile, validation: dict | None
               ) -> tuple[dict, dict]:
    made, skipped = study_plots(study, run_dir, objective)
    try:
        made["gantt"] = save_gantt(run_dir, best_eval, profile, validation).name
    except Exception as e:  # never lose a search result to a drawing problem
        skipped["gantt"] = f"{type(e).__name__}: {e}"[:200]
    return made, skipped


def save_gantt(run_dir: Path, best_eval, profile, validation: dict | None) -> Path:
    """The best plan's predicted timeline at its steady-state batch; when validated, the prediction for the
    measured iteration's own batch above the measured timeline."""
    panels = [(f"predicted: {best_eval.plan.name}, steady-state batch of {best_eval.batch.num_tokens} tokens "
               f"({best_eval.batch.num_decode:.0f} decode), {best_eval.prediction.layers_ms:.2f} ms over all layers",
               bars_from_prediction(best_eval.prediction))]
    measured = (validation or {}).get("gantt_measured")
    if measured:  # the measured iteration next to the prediction for that same batch
        b = BatchShape(**measured["batch"])
        pred = predict(best_eval.plan, profile, b, graphs=False)  # the measured one ran eagerly, op by op
        panels = [(f"predicted for the measured iteration's batch ({b.num_tokens} tokens, "
                   f"{b.num_decode:.0f} decode), launched eagerly", bars_from_prediction(pred)),
                  (f"measured (CUDA events around each op, eager, iteration {measured['iteration']})",
                   bars_from_timings(measured["timings"]))]
    names = [f"stream {i}" for i in range(best_eval.plan.num_streams)] + ["collectives"]
    return gantt(run_dir / "gantt.png", panels, f"{best_eval.plan.name} on {profile.gpu_name}", names)


def write_result(run_dir: Path, result: dict) -> Path:
    result = {"schema": SCHEMA, "kind": "search", "run_id": run_dir.name,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "partial": False, **result}
    return write_json_atomic(run_dir / "result.json", result)
