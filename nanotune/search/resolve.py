"""What a search runs on: the model (short names resolve to presets), the profile (explicit, a committed
reference for a named GPU, or measured fresh on this GPU) and the workload's lengths."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nanotune.errors import UserError
from nanotune.results import results_root
from nanotune.search.profiledata import Profile, load_profile

REPO_ROOT = Path(__file__).resolve().parents[2]
# Filters the benchmarks apply to generated datasets (scripts/engine_throughput.py): search predicts the same.
DATASET_FILTERS = {"sharegpt": "vllm", "lmsys": "vllm", "splitwise": "max-len:4096"}


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
                 has_gpu: bool) -> tuple[Profile, str]:
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
    path = fresh_profile(model, tp, results_dir)
    return load_profile(path), f"fresh profile: {path}"


def fresh_profile(model: str, tp: int, results_dir: str | None, progress: bool = True) -> Path:
    """Measure this GPU with `nanotune profile --quick` (about 2 minutes); returns its profile.json."""
    try:
        from nanotune.profile.run import ProfileOptions, run_profile
    except ImportError:
        raise UserError("this GPU has no profile yet and `nanotune profile` is not available to measure one: "
                        "pass --gpu NAME or --profile FILE") from None
    _, run_dir = run_profile(ProfileOptions(model=model, tp=tp, quick=True, results_dir=results_dir,
                                            progress=progress))
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
    meta: dict
    num_dropped: int = 0  # requests longer than the model's context, left out


DEFAULT_NUM_REQUESTS = 2000  # draws of a generated dataset: enough for its length statistics


def load_workload(spec: str, num_requests: int | None, seed: int, max_model_len: int) -> Workload:
    """A trace file (its first num_requests, default all), a dataset name, or NAME:IN:OUT for
    constant/random lengths (num_requests draws, default DEFAULT_NUM_REQUESTS)."""
    import workloads

    path = Path(spec)
    if path.exists() or "/" in spec or spec.endswith((".jsonl", ".json", ".csv", ".gz")):
        trace = workloads.read_trace(spec).head(num_requests)
        label = path.stem
    else:
        name, *lens = spec.split(":")
        params = {}
        if lens:
            if name not in ("constant", "random") or len(lens) != 2 or not all(x.isdigit() for x in lens):
                raise UserError(f"workload '{spec}': expected a dataset name, constant:IN:OUT, random:IN:OUT "
                                "or a trace file")
            params = {"input_len": int(lens[0]), "output_len": int(lens[1])}
        if name in DATASET_FILTERS:
            params["filter"] = DATASET_FILTERS[name]
        trace = workloads.generate(name, num_requests or DEFAULT_NUM_REQUESTS, seed, **params)
        label = f"{name}-{lens[0]}x{lens[1]}" if lens else name
    pairs = [(int(r.prompt_len), int(r.output_len)) for r in trace.requests]
    kept = [(p, o) for p, o in pairs if p + o <= max_model_len and p > 0 and o > 0]
    if not kept:
        raise UserError(f"workload '{spec}': no request fits the model's {max_model_len}-token context")
    return Workload(label, spec, kept, dict(trace.meta), len(pairs) - len(kept))
