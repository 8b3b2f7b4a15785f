"""The one entry point behind `nanotune search`: resolve model, profile and workload; run the study on the
performance model; predict the baselines; validate on the engine when a GPU is here; write results/<run-id>/.
"""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import asdict, dataclass, replace

from nanotune.errors import UserError
from nanotune.profile.ops import Shard
from nanotune.results import environment, new_run_dir, results_root
from nanotune.search import output, resolve
from nanotune.search.capacity import WorkloadStats, gpu_memory_gib
from nanotune.search.guard import discard_study, quiet_interrupts, storage_errors
from nanotune.search.objective import OBJECTIVES, Objective, SearchContext, evaluate, full_params
from nanotune.search.show import resume_command
from nanotune.search.space import (
    ENGINE_DEFAULT_DENSE_BATCH,
    ENGINE_DEFAULT_MAX_NUM_SEQS,
    Infeasible,
    build_plan,
    tuned_config,
)
from nanotune.search.study import open_study, pareto, prune_summary, ranked_trials, run_study, storage_url
from nanotune.signals import Interrupted, StopSignals


@dataclass(frozen=True)
class SearchConfig:
    model: str | None = None  # preset or short name; default: the profile's model, else llama-3-8b
    tp: int | None = 1  # None: the smallest that holds the weights and a useful KV cache (pick_tp)
    gpu: str | None = None  # use results/reference/<gpu>/profile-<model>-tp<N>.json
    profile: str | None = None  # an explicit profile file
    workload: str = "sharegpt"  # dataset name, constant:IN:OUT, random:IN:OUT[:RATIO] or a trace file
    num_requests: int | None = None
    seed: int = 0
    filter: str | None = None  # None: the dataset's default (workloads.spec.DEFAULT_FILTERS)
    objective: str = "throughput"
    tpot_limit_ms: float | None = None
    n_trials: int | None = 100
    timeout_s: float | None = None
    study: str | None = None
    storage: str | None = None
    resume: bool = False
    max_num_seqs: int | None = None  # None: searched (MAX_NUM_SEQS choices)
    gpu_memory_fraction: float = 0.9
    gpu_memory_gib: float | None = None
    block_size: int = 16
    composition: str = "steady"
    validate: int = 0  # best K plans to run on the engine (with the sequential and default plans)
    validate_requests: int = 256
    results_dir: str | None = None
    progress: bool = True
    kv_cache_dtype: str = "auto"  # EngineConfig.kv_cache_dtype to tune for (nanotune.search.kv_dtype)

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise UserError(f"--objective '{self.objective}': expected one of {', '.join(OBJECTIVES)}")
        if self.tp is not None and self.tp < 1:
            raise UserError(f"--tp {self.tp}: expected >= 1")
        if self.n_trials is None and self.timeout_s is None:
            raise UserError("give --n-trials or --timeout (or both)")


def _has_gpu() -> bool:
    from nanotune.search.validate import gpu_available

    return gpu_available()


def prepare(cfg: SearchConfig, log) -> tuple[SearchContext, dict]:
    """Model, profile, workload -> the model context and the identity of the study."""
    from engine.presets import get_preset
    from engine.sizing import resolve_max_model_len
    from workloads import summary_line

    has_gpu = _has_gpu()
    model_arg = cfg.model
    if model_arg is None and cfg.profile:  # the profile names its model
        from nanotune.search.profiledata import load_profile

        model_arg = load_profile(cfg.profile).model or "llama-3-8b"
    model, alias = resolve.resolve_model(model_arg or "llama-3-8b")
    if alias:
        log(f"model: {alias}")
    profile, source = resolve.find_profile(model, cfg.tp, cfg.gpu, cfg.profile, cfg.results_dir, has_gpu,
                                           cfg.kv_cache_dtype)
    resolve.check_profile_matches(profile, model, cfg.tp)
    log(f"profile: {source} ({profile.gpu_name}, {profile.num_sms} SMs)")
    from nanotune.search import kv_dtype

    kv = kv_dtype.choose(profile, cfg.kv_cache_dtype, is_reference=cfg.profile is None and cfg.gpu is not None)
    log(kv.line())
    max_model_len = resolve_max_model_len(get_preset(model))  # what the engine serves by default
    wl = resolve.load_workload(cfg.workload, cfg.num_requests, cfg.seed, max_model_len, cfg.filter)
    log(summary_line(wl.summary))
    stats = WorkloadStats.of(*zip(*wl.lengths, strict=True))
    memory = cfg.gpu_memory_gib or gpu_memory_gib(profile.gpu_name, profile.data.get("gpu"))
    ctx = SearchContext(profile, stats, Shard.of(profile.shapes), memory, cfg.objective, cfg.tpot_limit_ms,
                        cfg.max_num_seqs, cfg.gpu_memory_fraction, cfg.block_size, max_model_len, cfg.composition,
                        wl.lengths, kv_cache_dtype=cfg.kv_cache_dtype, kv_dtype_bytes=kv.requested_bytes)
    identity = {"model": model, "tp": cfg.tp, "workload": cfg.workload, "objective": cfg.objective,
                "max_num_seqs": cfg.max_num_seqs, "profile": profile.path}
    if cfg.filter:  # only when given, so studies made before --filter existed still resume
        identity["filter"] = cfg.filter
    if cfg.kv_cache_dtype != "auto":  # likewise
        identity["kv_cache_dtype"] = cfg.kv_cache_dtype
    info = {"model": model, "model_alias": alias, "profile_source": source, "workload": wl, "has_gpu": has_gpu,
            "identity": identity, "kv_cache": {**kv.to_dict(), "note": kv.line()}}
    return ctx, info


def _summaries(ctx: SearchContext, best_params: dict, model: str) -> tuple[object, dict]:
    """The tuned plan's evaluation, and the baselines' (the sequential plan, the engine's default plan and the
    hand-written two-nano-batch plan) at the engine's default limits and at the tuned ones."""
    best = evaluate(ctx, build_plan(best_params, f"tuned-{model}", ctx.profile.num_sms),
                    best_params["dense_batch_tokens"], best_params.get("collectives", "inline"),
                    best_params.get("max_num_seqs"))
    limits = [(ENGINE_DEFAULT_DENSE_BATCH, ctx.max_num_seqs or ENGINE_DEFAULT_MAX_NUM_SEQS),
              (best.dense_batch_tokens, best.max_num_seqs)]
    out = {}
    for tokens, seqs in dict.fromkeys(limits):
        for name, plan in baseline_plans(model).items():
            key = name if (tokens, seqs) == limits[0] else f"{name}@{tokens}x{seqs}"
            try:
                out[key] = evaluate(ctx, plan, tokens, "inline", seqs).summary()
            except Infeasible as e:
                out[key] = {"infeasible": str(e)}
    return best, out


def baseline_plans(model: str) -> dict:
    """name -> plan. The default may be the sequential plan itself (it is while overlap measures slower)."""
    from engine.plan import PipelinePlan
    from engine.plan_library import default_plan, nano_batch_plan
    from engine.presets import get_preset

    return {"sequential": PipelinePlan.sequential(), "default": default_plan(get_preset(model)),
            "nb2": nano_batch_plan(2)}


def _torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def pick_tp(cfg: SearchConfig, log) -> int:
    """The smallest TP at which the model's shard and a useful KV cache (engine.sizing.USEFUL_KV_SEQS sequences
    of the default max_model_len) fit the GPU's memory; says so in one line."""
    from engine.presets import get_preset
    from engine.sizing import GIB, USEFUL_KV_SEQS, default_max_model_len, min_tp_that_fits

    if cfg.profile:  # a given profile was measured at one TP: that is the one
        from nanotune.search.profiledata import load_profile

        return load_profile(cfg.profile).tp
    model, _ = resolve.resolve_model(cfg.model or "llama-3-8b")
    mc = get_preset(model)
    if cfg.gpu_memory_gib or cfg.gpu:
        gib, where = cfg.gpu_memory_gib or gpu_memory_gib(cfg.gpu), cfg.gpu or "--gpu-memory-gib"
    elif _torch_cuda():
        import torch

        gib, where = torch.cuda.get_device_properties(0).total_memory / GIB, torch.cuda.get_device_name()
    else:  # nothing to size for; the profile lookup then says what to pass
        return 1
    kv_tokens = USEFUL_KV_SEQS * default_max_model_len(mc)
    tp = min_tp_that_fits(mc, gib * GIB, cfg.gpu_memory_fraction, kv_tokens,
                          max_num_seqs=cfg.max_num_seqs or ENGINE_DEFAULT_MAX_NUM_SEQS)
    if tp is None:
        raise UserError(f"{model} does not fit {where} ({gib:.1f} GiB) at any TP up to 16")
    log(f"--tp {tp}: the smallest TP at which {model}'s weights and a KV cache of {kv_tokens:,} tokens fit "
        f"{where} ({gib:.1f} GiB x {cfg.gpu_memory_fraction})")
    return tp


def search(cfg: SearchConfig, log=print) -> tuple[dict, object]:
    """Run one search; returns (result dict, run directory)."""
    t_start = time.time()
    if cfg.tp is None:
        cfg = replace(cfg, tp=pick_tp(cfg, log))
    ctx, info = prepare(cfg, log)
    model, wl = info["model"], info["workload"]
    name = cfg.study or f"{model}-tp{cfg.tp}-{wl.label}-{cfg.objective}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage = storage_url(cfg.storage, name, results_root(cfg.results_dir), cfg.resume)
    with storage_errors(storage):
        study = open_study(name, storage, cfg.objective, cfg.seed, cfg.resume, info["identity"], cfg.tp,
                           constrained=cfg.tpot_limit_ms is not None, search_seqs=cfg.max_num_seqs is None)
    limits = [f"{cfg.n_trials:,} trials" if cfg.n_trials else "", f"{cfg.timeout_s:g} s" if cfg.timeout_s else ""]
    log(f"study {name}: {' or '.join(x for x in limits if x)} (Ctrl-C stops it and writes what finished)")
    with StopSignals(on_repeat=lambda sig: log("already stopping: writing what the study finished")) as stop:
        try:
            return _finish(cfg, ctx, info, study, name, storage, stop, t_start, log)
        except BaseException:
            if stop.stopped:  # stopped with nothing to write: keep nothing of a fresh study either
                left = discard_study(storage, name, is_fresh=not cfg.resume)
                raise Interrupted(f"{signal.Signals(stop.received[0]).name}: search stopped before any trial "
                                  f"completed; nothing written{'; ' + left if left else ''}",
                                  stop.exit_code) from None
            left = discard_study(storage, name, is_fresh=not cfg.resume)
            if left:
                log(left)
            raise


def _finish(cfg: SearchConfig, ctx: SearchContext, info: dict, study, name: str, storage: str, stop,
            t_start: float, log) -> tuple[dict, object]:
    model, wl = info["model"], info["workload"]
    num_before = len(study.trials)
    try:
        with quiet_interrupts():
            run_study(study, Objective(ctx), cfg.n_trials, cfg.timeout_s, cfg.progress,
                      should_stop=lambda: stop.stopped)
    except KeyboardInterrupt:  # SIGINT or SIGTERM: keep the trials that completed
        pass
    if stop.stopped:
        cfg = replace(cfg, validate=0)  # stopped: write what the model predicted, run nothing more
    ranked = ranked_trials(study, cfg.objective)
    if not ranked:
        if stop.stopped:
            raise KeyboardInterrupt
        reasons = "; ".join(f"{n}x {r}" for r, n in list(prune_summary(study).items())[:3])
        limit = f" within TPOT {cfg.tpot_limit_ms} ms" if cfg.tpot_limit_ms else ""
        raise UserError(f"no feasible plan{limit} among {len(study.trials)} trials ({reasons or 'none completed'})")
    best_trial = ranked[0]
    best, baselines = _summaries(ctx, full_params(best_trial.params, ctx), model)
    best.plan.meta.update(model=model, tp_degree=cfg.tp)  # bench warns when the plan runs another model
    run_dir = new_run_dir("search", f"{model}-{wl.label}", root=cfg.results_dir)
    front = pareto(ranked) if cfg.objective == "both" else []
    source = {"run_id": run_dir.name, "objective": cfg.objective, "workload": wl.spec, "profile": ctx.profile.path,
              "kv_cache": info["kv_cache"]}  # the profile's KV dtype and what was scaled by bytes
    best_tuned = tuned_config(full_params(best_trial.params, ctx), best.plan, model, cfg.tp,
                              {**source, "trial": best_trial.number}, cfg.kv_cache_dtype)
    front_tuned = []
    for t in front:
        p = full_params(t.params, ctx)
        front_tuned.append((t.number, tuned_config(p, build_plan(p, f"pareto-{t.number}", ctx.profile.num_sms),
                                                   model, cfg.tp, {**source, "trial": t.number},
                                                   cfg.kv_cache_dtype)))
    files = output.save_plans(run_dir, best_tuned, front_tuned)
    files.update(output.save_study(study, storage, run_dir))
    validation = _validate(cfg, ctx, info, ranked, best, log)
    plots, skipped = output.save_plots(study, run_dir, cfg.objective, best, ctx.profile, validation)
    seq = baselines.get("sequential", {}).get("total_token_throughput")
    dflt = baselines.get("default", {}).get("total_token_throughput")
    nb2 = baselines.get("nb2", {}).get("total_token_throughput")
    result = {
        "model": model, "model_alias": info["model_alias"], "tp": cfg.tp,
        "profile": {"source": info["profile_source"], "path": ctx.profile.path, "gpu": ctx.profile.gpu_name,
                    "num_sms": ctx.profile.num_sms, "peaks": ctx.profile.peaks,
                    "notes": ctx.profile.data.get("notes", [])},
        "workload": {"spec": wl.spec, "label": wl.label, "num_requests": len(wl.lengths),
                     "num_dropped_too_long": wl.num_dropped, "requests": wl.summary, "stats": ctx.stats.to_dict(),
                     "meta": wl.meta},
        "engine": {"max_num_seqs": cfg.max_num_seqs or "searched", "gpu_memory_fraction": cfg.gpu_memory_fraction,
                   "gpu_memory_gib": ctx.memory_gib, "block_size": cfg.block_size, "max_model_len": ctx.max_model_len,
                   "kv_cache_dtype": cfg.kv_cache_dtype},
        "kv_cache": info["kv_cache"],
        "objective": cfg.objective, "tpot_limit_ms": cfg.tpot_limit_ms, "composition": cfg.composition,
        "study": {"name": name, "storage": storage, "resumed": cfg.resume, "num_trials": len(study.trials),
                  "num_trials_this_run": len(study.trials) - num_before,
                  "num_complete": sum(1 for t in study.trials if t.state.name == "COMPLETE"),
                  "num_pruned": sum(1 for t in study.trials if t.state.name == "PRUNED"),
                  "pruned_reasons": dict(list(prune_summary(study).items())[:5]),
                  "sampler": type(study.sampler).__name__, "seed": cfg.seed},
        "best": {"trial": best_trial.number, "params": dict(best_trial.params), "plan_file": files["plan"],
                 **best.summary()},
        "baselines": baselines,
        "predicted_speedup": {"vs_sequential": best.throughput / seq if seq else None,
                              "vs_default": best.throughput / dflt if dflt else None,
                              "vs_nb2": best.throughput / nb2 if nb2 else None},
        "pareto": [{"trial": t.number, "params": dict(t.params), "total_token_throughput": t.values[0],
                    "tpot_ms": t.values[1], "plan_file": f"plans/pareto-{t.number}.json"}
                   for t in front[:output.MAX_PARETO_PLANS]],
        "validation": validation, "files": files, "plots": plots, "plots_skipped": skipped,
        "bound": _bound(ctx, wl),
        "notes": output.model_notes(ctx, cfg.composition) + [info["kv_cache"]["note"]], "config": asdict(cfg),
        "command": " ".join(sys.argv), "environment": environment(), "wall_s": time.time() - t_start,
        "resume_command": resume_command(cfg, name),
    }
    if stop.stopped:
        result.update(partial=True, signal=signal.Signals(stop.received[0]).name)
    output.write_result(run_dir, result)
    return result, run_dir


def _bound(ctx: SearchContext, wl) -> dict:
    """The power-aware bound of the workload on the profile's card (results.bound), beside the predictions."""
    from nanotune.profile.ops import Shard
    from nanotune.results.bound import bound_or_why

    s = Shard.of(ctx.profile.data["shapes"], ctx.profile.model, ctx.tp)
    data, where = ctx.profile.data, ctx.profile.path or "profile"
    if not data.get("power"):  # the card's rates may sit in another reference profile of the same GPU
        import json

        from nanotune.bench.bound import find_power_profile

        found = find_power_profile(ctx.profile.gpu_name, ctx.profile.model)
        if found is not None:
            data, where = {**data, "power": json.loads(found.read_text())["power"]}, str(found)
    return bound_or_why(data, where, s, wl.lengths, ctx.kv_dtype_bytes)


def _validate(cfg: SearchConfig, ctx: SearchContext, info: dict, ranked: list, best, log) -> dict | None:
    """The best K plans and the baselines (sequential, default, nb2) on the engine, or why not."""
    if cfg.validate <= 0:
        return None
    if not info["has_gpu"]:
        log("--validate needs a CUDA GPU: skipped (the result holds predictions only)")
        return {"skipped": "no CUDA GPU on this machine"}
    import torch

    if cfg.tp > torch.cuda.device_count():
        why = f"TP {cfg.tp} needs {cfg.tp} GPUs; this machine has {torch.cuda.device_count()}"
        log(f"--validate: skipped ({why}; the result holds predictions only)")
        return {"skipped": why}
    from nanotune.search.validate import validate_plans

    entries = [("tuned", best.plan, best.dense_batch_tokens, best.max_num_seqs)]
    seen = {(best.plan, best.dense_batch_tokens, best.max_num_seqs)}  # plans compare by what runs
    for t in ranked[1:]:
        if len(entries) >= cfg.validate:
            break
        p = full_params(t.params, ctx)
        plan = build_plan(p, f"trial-{t.number}", ctx.profile.num_sms)
        key = (plan, p["dense_batch_tokens"], p.get("max_num_seqs", ENGINE_DEFAULT_MAX_NUM_SEQS))
        if key not in seen:
            seen.add(key)
            entries.append((f"trial-{t.number}", plan, *key[1:]))
    seqs = ctx.max_num_seqs or ENGINE_DEFAULT_MAX_NUM_SEQS
    for label, plan in baseline_plans(info["model"]).items():  # a default equal to sequential runs once
        key = (plan, ENGINE_DEFAULT_DENSE_BATCH, seqs)
        if key not in seen or label == "sequential":
            seen.add(key)
            entries.append((label, plan, ENGINE_DEFAULT_DENSE_BATCH, seqs))
    lengths = info["workload"].lengths[: cfg.validate_requests]
    return validate_plans(entries, ctx, info["model"], lengths, cfg.seed, log=log, tp=cfg.tp)

