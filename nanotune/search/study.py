"""The Optuna study: storage, sampler, resume, the run with a progress bar, and the best trials.

Storage is sqlite under results/search/<study>.db unless --storage names any Optuna RDB URL (then several
machines can work on one study). A fresh study starts with the sequential and the two-nano-batch plan
enqueued, so the sampler knows the hand-written plans from the first trials, and a tuned plan is never
worse than them under the model.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from nanotune.errors import UserError
from nanotune.search.objective import DIRECTIONS, Objective, constraints
from nanotune.search.space import ENGINE_DEFAULT_MAX_NUM_SEQS, baseline_params


def storage_url(storage: str | None, study_name: str, root: Path, resume: bool = False) -> str:
    """--storage as given, else sqlite:///<results>/search/<study>.db (which must exist to resume)."""
    if storage:
        return storage
    path = root / "search" / f"{study_name}.db"
    if resume and not path.exists():
        raise UserError(f"--resume: no study '{study_name}': {path} does not exist (give --storage if it lives "
                        "elsewhere)")
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def make_sampler(objective: str, seed: int, num_done: int, constrained: bool = False):
    """Seeded TPE (multivariate, grouped: the space is conditional) or NSGA-II for two objectives. A resumed
    study seeds with seed + trials so far, so it does not redraw the first run's startup points. Under a
    TPOT limit the sampler learns the constraint: Optuna >= 5 from trial.set_constraint (the objective sets
    it), older ones from constraints_func."""
    import optuna

    s = seed + num_done
    kw = {"constraints_func": constraints} if constrained and not has_set_constraint() else {}
    if objective == "both":
        return optuna.samplers.NSGAIISampler(seed=s, population_size=20, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=s, multivariate=True, group=True, n_startup_trials=10, **kw)


def has_set_constraint() -> bool:
    import optuna

    return hasattr(optuna.trial.Trial, "set_constraint")


def open_study(name: str, storage: str, objective: str, seed: int, resume: bool, identity: dict, tp: int,
               constrained: bool = False, search_seqs: bool = True):
    """Create a fresh study (one that exists is an error without --resume) or load one to continue."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    names = optuna.study.get_all_study_names(storage=storage)
    if resume:
        if name not in names:
            have = ", ".join(names) or "none"
            raise UserError(f"--resume: no study '{name}' in {storage} (studies there: {have})")
        study = optuna.load_study(study_name=name, storage=storage)
        stored = study.user_attrs.get("nanotune", {})
        for key in ("model", "tp", "workload", "filter", "objective"):
            if key in stored and stored[key] != identity.get(key):
                raise UserError(f"--resume: study '{name}' was run with {key} {stored[key]!r}, not "
                                f"{identity.get(key)!r}")
        study.sampler = make_sampler(objective, seed, len(study.trials), constrained)
        return study
    if name in names:
        raise UserError(f"study '{name}' already exists in {storage}: add --resume to continue it, or give "
                        "another --study name")
    study = optuna.create_study(study_name=name, storage=storage, directions=DIRECTIONS[objective],
                                sampler=make_sampler(objective, seed, 0, constrained))
    study.set_user_attr("nanotune", identity)
    for base in ("sequential", "nb2"):
        seqs = ENGINE_DEFAULT_MAX_NUM_SEQS if search_seqs else None
        study.enqueue_trial(baseline_params(base, tp=tp, max_num_seqs=seqs), user_attrs={"baseline": base})
    return study


def _best_text(study, objective: str) -> str:
    try:
        if objective == "both":
            return f"{len(study.best_trials)} on the Pareto front"
        t = study.best_trial
    except ValueError:
        return "no feasible trial yet"
    if objective == "throughput":
        return f"best {t.value:,.0f} tok/s (trial {t.number})"
    return f"best TPOT {t.value:.2f} ms (trial {t.number})"


def run_study(study, objective: Objective, n_trials: int | None, timeout: float | None, progress: bool,
              should_stop=lambda: False) -> None:
    """Optimize with a rich progress bar showing the best so far (on stderr). should_stop() is asked after every
    trial: a stop signal normally lands as a KeyboardInterrupt, but one raised where Python cannot propagate it
    (a finalizer, a callback: "Exception ignored in ...") would otherwise leave the study running."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from nanotune.console import err_console

    columns = [TextColumn("search"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[best]}")]
    with Progress(*columns, console=err_console, disable=not progress, transient=False) as bar:
        task = bar.add_task("search", total=n_trials, best="")

        def callback(st, trial):
            bar.update(task, advance=1, best=_best_text(st, objective.ctx.objective))
            if should_stop():
                st.stop()

        study.optimize(objective, n_trials=n_trials, timeout=timeout, callbacks=[callback])


def feasible(trial) -> bool:
    from optuna.trial import TrialState

    return trial.state == TrialState.COMPLETE and trial.user_attrs.get("tpot_excess_ms", 0.0) <= 0


def ranked_trials(study, objective: str) -> list:
    """Completed trials within the TPOT limit, best first (both: the Pareto front by throughput, then the
    rest). Ties keep the earlier trial, so an enqueued baseline wins over an equal later copy."""
    done = [t for t in study.trials if feasible(t)]
    if objective == "latency":
        return sorted(done, key=lambda t: (t.values[0], t.number))
    if objective == "throughput":
        return sorted(done, key=lambda t: (-t.values[0], t.number))
    front = {t.number for t in pareto(done)}
    return sorted(done, key=lambda t: (t.number not in front, -t.values[0], t.number))


def pareto(trials: list) -> list:
    """Non-dominated trials for (maximize throughput, minimize TPOT), by throughput descending; of trials
    with the same values (the same plan drawn twice) the first stands for them."""
    out, seen = [], set()
    for t in trials:
        key = (round(t.values[0], 3), round(t.values[1], 6))
        if key in seen:
            continue
        thr, lat = t.values
        if not any(u.values[0] >= thr and u.values[1] <= lat and (u.values[0] > thr or u.values[1] < lat)
                   for u in trials):
            seen.add(key)
            out.append(t)
    return sorted(out, key=lambda t: -t.values[0])


def prune_summary(study) -> dict[str, int]:
    """Pruned trials counted by reason, most common first."""
    from optuna.trial import TrialState

    out: dict[str, int] = {}
    for t in study.trials:
        if t.state == TrialState.PRUNED:
            reason = t.user_attrs.get("pruned_reason", "pruned")
            out[reason] = out.get(reason, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
