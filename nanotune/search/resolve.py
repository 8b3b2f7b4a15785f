"""What a search runs on: the model (short names resolve to presets), the profile (explicit, a committed
reference for a named GPU, or measured fresh on this GPU) and the workload's lengths."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nanotune.errors import UserError
from nanotune.results import results_root
from nanotune.search.profiledata import Profile, load_profile

REPO_ROOT = Path(__file__).resolve().parents[2]


def resolve_model(name: str) -> tuple[str, str | None]:
    """(preset name, the line saying what a short name became, or None when it was already a preset)."""
    from engine.presets import get_preset

    preset = get_preset(name).name  # EngineConfigError (one line, exit 2) for an unknown name
    return preset, (f"{name} -> {preset}" if preset != name else None)


def gpu_slug(name: str) -> str:
    """'H100', 'NVIDIA H100 80GB HBM3' -> 'h100': the folder name under results/reference/."""
    words = name.lower().replace("nvidia", " ").replace("_", " ").replace("-", " ").split()
    return words[0] if words else name.lower()


def reference_candidates(gpu: str, model: str, tp: int, results_dir: str | None = None) -> list[Path]:
    """Where a committed reference profile may be: under the results root in use, then this checkout's."""
    name = f"profile-{model}-tp{tp}.json"
    from nanotune.search.reference import PACKAGE_REFERENCE

    paths = [results_root(results_dir) / "reference" / gpu_slug(gpu) / name,
             REPO_ROOT / "results" / "reference" / gpu_slug(gpu) / name,
             PACKAGE_REFERENCE / gpu_slug(gpu) / name]  # installed with `pip install .`
    out: list[Path] = []
    for p in paths:
        if p.resolve() not in [q.resolve() for q in out]:
            out.append(p)
    return out


def find_profile(model: str, tp: int, gpu: str | None, profile: str | None, results_dir: str | None,
                 has_gpu: bool, kv_cache_dtype: str = "auto") -> tuple[Profile, str]:
    """(the profile, how it was found). Order: --profile FILE; --gpu NAME (committed reference); a fresh
    profile of this machine's GPU; else a one-line error saying what to pass."""
    if profile:
        return load_profile(profile), f"--profile {profile}"
    if gpu:
        cands = reference_candidates(gpu, model, tp, results_dir)
        for p in cands:  # the file, or a `nanotune profile --out` directory of that name holding profile.json
            for f in (p, p.with_suffix("") / "profile.json"):
                if f.is_file():
                    return load_profile(f), f"reference profile for {gpu_slug(gpu)}: {f}"
        from nanotune.search.reference import available_text

        raise UserError(f"no reference profile for {model} at TP {tp} on {gpu_slug(gpu)}: looked for {cands[0]}; "
                        f"{available_text(results_dir)} (record one with `nanotune profile --model {model} --tp "
                        f"{tp}` on that GPU, or pass --profile FILE)")
    if not has_gpu:
        from nanotune.search.reference import available_text

        raise UserError(f"no GPU here to profile and no reference profile of {model} at TP {tp}: pass --gpu NAME "
                        f"(a committed profile under results/reference/NAME/) or --profile FILE; "
                        f"{available_text(results_dir)}")
    kv = {"kv_cache_dtype": kv_cache_dtype} if kv_cache_dtype != "auto" else {}  # measured over that cache
    path = fresh_profile(model, tp, results_dir, **kv)
    return load_profile(path), f"fresh profile: {path}"


def fresh_profile(model: str, tp: int, results_dir: str | None, progress: bool = True,
                  kv_cache_dtype: str = "auto") -> Path:
    """Measure this GPU with `nanotune profile --quick` (about 2 minutes); returns its profile.json."""
    try:
        from nanotune.profile.run import ProfileOptions, run_profile
    except ImportError:
        raise UserError("this GPU has no profile yet and `nanotune profile` is not available to measure one: "
                        "pass --gpu NAME or --profile FILE") from None
    _, run_dir = run_profile(ProfileOptions(model=model, tp=tp, quick=True, results_dir=results_dir,
                                            progress=progress, kv_cache_dtype=kv_cache_dtype))
    return Path(run_dir) / "profile.json"


def check_profile_matches(profile: Profile, model: str, tp: int) -> None:
    if profile.model and profile.model != model:
        raise UserError(f"{profile.path}: profile is of '{profile.model}', not '{model}' (pass --model "
                        f"{profile.model}, or a profile of {model})")
    if profile.tp != tp:
        raise UserError(f"{profile.path}: profile is for TP {profile.tp}, not --tp {tp}")


@dataclass(frozen=True)
class Workload:
    label: str  # for run ids and study names: "sharegpt", "constant-1024x512", a file's stem
    spec: str
    lengths: list[tuple[int, int]]
    meta: dict  # the trace's, with "unrunnable": the requests left out and why (workloads.runnable)
    num_dropped: int = 0  # requests that cannot run on the model (over its context, empty), left out

    @property
    def summary(self) -> dict:
        """The request statistics `nanotune bench` prints and stores for the same workload."""
        from workloads import request_summary

        return request_summary(self.lengths, self.meta)


DEFAULT_NUM_REQUESTS = 2000  # draws of a generated dataset: enough for its length statistics


def load_workload(spec: str, num_requests: int | None, seed: int, max_model_len: int,
                  filter: str | None = None) -> Workload:
    """The workload `spec` names (workloads.spec, the parser bench and trace use: a dataset with its default
    filter, constant:IN:OUT, random:IN:OUT[:RATIO] or a trace file), less the requests that cannot run in
    max_model_len. A dataset draws num_requests (default DEFAULT_NUM_REQUESTS), a file keeps its first."""
    import workloads
    from workloads.runnable import num_dropped

    if num_requests is None and not workloads.is_file_spec(spec):
        num_requests = DEFAULT_NUM_REQUESTS
    parsed = workloads.parse_workload(spec, num_requests, seed, filter)
    trace = workloads.drop_unrunnable(parsed.load(), max_model_len)
    if not len(trace):
        raise UserError(f"workload '{spec}': no request can run (dropped {workloads.describe_dropped(trace.meta)})")
    kept = [(int(r.prompt_len), int(r.output_len)) for r in trace.requests]
    return Workload(parsed.label, spec, kept, dict(trace.meta), num_dropped(trace.meta))
