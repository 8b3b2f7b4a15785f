"""TunedConfig: what `nanotune search` tunes and `bench` (and a server) run: a plan plus the engine limits it
was tuned with (dense batch, max seqs), the KV cache dtype and the model it was tuned for. Torch-free; one
file, one loader.

A tuned-config file is JSON with `"schema": "nanotune.tuned/1"`. `load_tuned` also takes a plain plan JSON
(PipelinePlan.to_dict): its limits are then unset, except in plan files written by searches before this
file existed, which carried them in `meta.engine`; those are read here and nowhere else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from engine.config import KV_CACHE_DTYPES
from engine.errors import EngineConfigError, read_json
from engine.plan import PipelinePlan

SCHEMA = "nanotune.tuned/1"
LIMITS = ("max_num_batched_tokens", "max_num_seqs")


@dataclass(frozen=True)
class TunedConfig:
    plan: PipelinePlan
    max_num_batched_tokens: int | None = None  # the dense batch (EngineConfig.max_num_batched_tokens)
    max_num_seqs: int | None = None
    model: str | None = None  # the model (preset name or checkpoint) it was tuned for
    tp: int = 1
    source: dict = field(default_factory=dict)  # where it came from (search run id, objective, workload, ...)
    # EngineConfig.kv_cache_dtype it was tuned for (None: files from before the field; no constraint). A
    # plan tuned for fp8 KV assumes twice the cache and half the attention bytes of "auto"
    kv_cache_dtype: str | None = None

    def limits(self) -> dict[str, int]:
        """The engine limits it sets, as EngineConfig keyword arguments (unset ones left out)."""
        return {k: getattr(self, k) for k in LIMITS if getattr(self, k) is not None}

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "model": self.model, "tp": self.tp,
                "max_num_batched_tokens": self.max_num_batched_tokens, "max_num_seqs": self.max_num_seqs,
                "kv_cache_dtype": self.kv_cache_dtype, "plan": self.plan.to_dict(), "source": self.source}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @staticmethod
    def from_dict(d: dict, where: str = "tuned config") -> TunedConfig:
        if not isinstance(d, dict):
            raise EngineConfigError(f"{where}: expected a JSON object")
        if d.get("schema") != SCHEMA:  # a plain plan file
            plan = PipelinePlan.from_dict(d, where=where)
            legacy = plan.meta.get("engine") if isinstance(plan.meta.get("engine"), dict) else {}
            return TunedConfig(plan, *(_limit(legacy, k, f"{where}: meta.engine") for k in LIMITS),
                               model=plan.meta.get("model") if isinstance(plan.meta.get("model"), str) else None)
        unknown = set(d) - {"schema", "model", "tp", "plan", "source", "kv_cache_dtype", *LIMITS}
        if unknown:
            raise EngineConfigError(f"{where}: unknown field '{sorted(unknown)[0]}'")
        if "plan" not in d:
            raise EngineConfigError(f"{where}: missing field 'plan'")
        plan = PipelinePlan.from_dict(d["plan"], where=f"{where}: plan")
        model = d.get("model")
        if model is not None and not isinstance(model, str):
            raise EngineConfigError(f"{where}: field 'model' must be a string")
        tp = d.get("tp", 1)
        if not isinstance(tp, int) or isinstance(tp, bool) or tp < 1:
            raise EngineConfigError(f"{where}: field 'tp' must be an integer >= 1")
        source = d.get("source", {})
        if not isinstance(source, dict):
            raise EngineConfigError(f"{where}: field 'source' must be an object")
        kv = d.get("kv_cache_dtype")
        if kv is not None and kv not in KV_CACHE_DTYPES:
            raise EngineConfigError(f"{where}: field 'kv_cache_dtype': expected one of {', '.join(KV_CACHE_DTYPES)}, "
                                    f"got {kv!r}")
        return TunedConfig(plan, *(_limit(d, k, where) for k in LIMITS), model=model, tp=tp, source=source,
                           kv_cache_dtype=kv)


def _limit(d: dict, key: str, where: str) -> int | None:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise EngineConfigError(f"{where}: field '{key}' must be an integer >= 1 (got {v!r})")
    return v


def kv_cache_dtype_with(tuned: TunedConfig | None, requested: str, flag: str = "kv_cache_dtype",
                        where: str = "tuned config") -> str:
    """The KV cache dtype to run a tuned config with: its own when `requested` is "auto" (the default), else
    `requested`, which must then be the same; a conflict is one line naming both (EngineConfigError)."""
    tuned_kv = tuned.kv_cache_dtype if tuned is not None else None
    if tuned_kv is None or requested == tuned_kv:
        return requested
    if requested == "auto":
        return tuned_kv
    raise EngineConfigError(f"{flag} {requested} conflicts with {where}, tuned for kv_cache_dtype {tuned_kv} "
                            f"(drop {flag}, or run a config tuned for {requested})")


def tuned_file(spec: str | None) -> TunedConfig | None:
    """The TunedConfig a plan spec names when it is a file (plan_library.resolve_plan's rule), else None."""
    if not spec or not (spec.endswith(".json") or "/" in spec or Path(spec).is_file()):
        return None
    return load_tuned(spec)


def is_tuned_file(d) -> bool:
    return isinstance(d, dict) and d.get("schema") == SCHEMA


def load_tuned(path: str | Path) -> TunedConfig:
    """A tuned-config file or a plain plan file; errors name the file and field (EngineConfigError)."""
    return TunedConfig.from_dict(read_json(path, "no such plan file (nor tuned config)"), where=str(path))
