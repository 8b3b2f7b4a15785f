"""Where bench's power-aware bound comes from: the profile (--profile FILE; else the committed reference
profile of --gpu NAME or of the GPU the in-process engine runs on, results/reference/<gpu>/), the model's
shapes, the KV dtype, and each run's completed requests. The arithmetic is nanotune.results.bound's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nanotune.errors import UserError
from nanotune.results.bound import (
    BoundUnavailable,
    Rates,
    bound_block,
    kv_dtype_bytes,
    rates_from_profile,
    workload_work,
)


@dataclass(frozen=True)
class BoundSetup:
    rates: Rates | None
    shard: object | None  # nanotune.profile.ops.Shard
    kv_dtype: str = "auto"
    why: str | None = None  # when there is no bound: why not, in one line

    def block(self, lengths: list[tuple[int, int]]) -> dict | None:
        """The bound of these (prompt, output) requests (results.bound.bound_block), or None."""
        if self.rates is None or self.shard is None or not lengths:
            return None
        return bound_block(workload_work(lengths), self.shard, self.rates, kv_dtype_bytes(self.kv_dtype))

    def describe(self) -> dict:
        return {"source": self.rates.source if self.rates else None, "kv_dtype": self.kv_dtype, "why": self.why}


def find_power_profile(gpu: str, model: str | None, results_dir: str | None = None) -> Path | None:
    """The committed reference profile of `gpu` with a power section: the model's own, else any."""
    import json

    from nanotune.search.resolve import reference_candidates

    cands = reference_candidates(gpu, model or "", 1, results_dir)
    files = [c for c in cands if c.is_file()] + [f for c in cands for f in sorted(c.parent.glob("profile-*.json"))]
    for f in files:
        try:
            if json.loads(f.read_text()).get("power"):
                return f
        except (OSError, ValueError):
            continue
    return None


def bound_setup(cfg, describe: dict, local_gpu: str | None) -> BoundSetup:
    """The bound's inputs for a bench run, or a BoundSetup saying why there is none."""
    from engine.presets import get_preset
    from nanotune.profile.ops import shard
    from nanotune.profile.schema import load_profile

    kv_dtype = str(describe.get("kv_cache_dtype") or "auto")
    try:
        sh = shard(get_preset(describe.get("model") or cfg.model), 1)
    except (ValueError, KeyError, TypeError):
        return BoundSetup(None, None, kv_dtype, f"model '{describe.get('model') or cfg.model}' is not a preset: "
                                                "no shapes to bound")
    path = getattr(cfg, "profile", None)
    gpu = getattr(cfg, "gpu", None) or (local_gpu if cfg.engine != "endpoint" else None)
    if not path:
        if not gpu:
            return BoundSetup(None, sh, kv_dtype, "no profile: pass --profile FILE or --gpu NAME (an endpoint's "
                                                  "GPU)" if cfg.engine == "endpoint" else
                              "no GPU here and no --profile FILE")
        found = find_power_profile(gpu, sh.model, getattr(cfg, "results_dir", None))
        if found is None:
            return BoundSetup(None, sh, kv_dtype, f"no reference profile with a power section for '{gpu}' under "
                                                  "results/reference/ (measure one: `nanotune profile --quick "
                                                  "--power-only`, pass it with --profile)")
        path = str(found)
    try:
        rates = rates_from_profile(load_profile(path), str(path))
    except (BoundUnavailable, UserError) as e:
        return BoundSetup(None, sh, kv_dtype, str(e))
    return BoundSetup(rates, sh, kv_dtype)
