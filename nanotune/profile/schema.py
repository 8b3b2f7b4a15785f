"""The profile file, `nanotune.profile/1`, and its loader. `nanotune search` reads profiles only through
load_profile(), which checks what search relies on and names the file and field of the first problem.

Layout (JSON object; times in milliseconds; sm_budget null = the op's full grid / the whole GPU):

  "schema": "nanotune.profile/1"
  "kind": "profile", "run_id": str, "created": str, "partial": bool
  "model": str                  preset name, e.g. "llama-3-8b"
  "tp": int >= 1                tensor-parallel degree the shard shapes are for
  "quick": bool                 --quick (fewer points)
  "device": str                 "cuda:0" (or "cpu" for a code-path check whose times mean nothing)
  "shapes": {hidden, heads, kv_heads, head_dim, intermediate, vocab, num_layers, params_per_gpu}: ints
                                per GPU (heads, kv_heads, intermediate divided by tp; num_layers = the model's)
  "gpu": {"name": str, "num_sms": int | null, "l2_mib": number | null, "memory_gib": number | null}
  "kv_cache_dtype": str         EngineConfig.kv_cache_dtype the attention ops and rope_kv ran over ("auto" = the
                                model dtype, "fp8" = e4m3 with the engine's scales); optional: profiles written
                                before it lack it and were all "auto" (kv_cache_dtype_of). "kv_element_bytes": int,
                                the cache's bytes per element (not checked)
  "environment": {...}          nanotune.results.environment()
  "peaks": {"bf16_tflops": number > 0, "copy_gb_s": number > 0, "gemm": str, "copy": str}
  "ops": {op: {"kind": "gemm" | "attention" | "memory", "shape": {...}, "points": [point, ...]}}
        op in engine.plan.LAYER_OPS (attn_norm qkv rope_kv decode_attn prefill_attn o_proj mlp_norm gate_up
        silu_mul down). shape: gemm {"n", "k"} (weight [n, k]); attention {"heads", "kv_heads", "head_dim"};
        memory {"width"}.
        point: {"sm_budget": int | null, "ms": number > 0, "ms_min", "ms_p90", "repeats",
                "flops", "bytes", "tflops", "gb_s"} plus its inputs:
          gemm and memory ops:  "tokens": int (rows of the dense batch)
          decode_attn:          "batch": int (sequences, one query token each), "context": int (tokens each)
          prefill_attn:         "tokens": int (new tokens in all), "context": int (tokens already cached per
                                sequence before its chunk), "seqs": int (the tokens are split evenly over them)
        Only decode_attn has points with sm_budget != null (the engine's persistent grid, max_programs).
  "interference": [{"a": op, "b": op, "a_point": {...}, "b_point": {...}, "b_sm_budget": int | null,
        "alone_a_ms", "alone_b_ms", "together_ms", "a_ms", "b_ms", "slowdown_a", "slowdown_b",
        "predicted_ms", "back_to_back_ms", "error_vs_predicted", "overlap_realized": number | null,
        "concurrent": bool, optional "alone_b_full_ms", "gain_vs_sequential"}]
        a is a GEMM on stream 0 at the full GPU; b on stream 1 at b_sm_budget. a_ms / b_ms: each one's own
        span while the other ran; slowdown = span / alone; predicted = max(alone_a, alone_b) (ideal overlap);
        back_to_back = alone_a + alone_b; error_vs_predicted = together / predicted - 1.
  "micro_pair": {"mlp": {"ops", "tokens", "ms"}, "attn": {"op", "batch", "context", "kv_gib", "ms"},
        "back_to_back_ms", "sum_alone_ms", "two_stream": [{"sm_budget", "attn_alone_ms", "together_ms",
        "mlp_ms", "attn_ms", "predicted_ms", "gain_vs_back_to_back"}], "best": {...} | null, "concurrent"}
        | null (not measured)
  "power": {"seconds", "gemm": {"op", "tokens", "n", "k", "ms", "tflops" > 0, "cold_tflops", "power_w",
        "sm_clock_mhz"}, "read": [{"kernel": "torch_sum" | "probe_tma" | "probe_ptr" | "decode_attn",
        "programs": int | null (full grid), "bytes", "ms", "gb_s" > 0, "power_w", "sm_clock_mhz"}],
        "together": [{"read_kernel", "programs", "gemm_fraction", "read_fraction", "sum", "power_w",
        "sm_clock_mhz"}], "best_together", "best_read_gb_s", "decode_point", "errors", "why", "method"}
        | null (not measured; optional like launch and sustained, so older /1 profiles still load):
        power.py, each rate sustained for seconds; results.bound turns it into the power-aware bound
  "launch": {"points": [{"batch", "context", "ops", "sum_alone_ms", "eager_layer_ms", "eager_gap_ms",
        "graph_layer_ms", "graph_gap_ms"}], "method": str} | null (launch.py: the idle time per kernel of a
        decode-only layer launched eagerly and replayed as a CUDA graph; graph fields null off a GPU; optional:
        profiles written before it lack the key)
  "sustained": {"points": [{"bound": "compute" | "memory", "ops", "points", "cold_layer_ms",
        "sustained_layer_ms", "vs_cold" (older profiles: "factor", the same ratio)}], "seconds", "method"} |
        null (sustained.py: a layer replayed back to back for seconds; the model holds it against the sum of
        its ops' alone times; no points off a GPU; optional like "launch")
  "collectives": {} at tp 1, else {"all_reduce": {"after", "per_layer", "bytes_per_token", "ranks",
        "measured": false, "why"}} on a machine without the ranks' GPUs, or with "measured": true, "impl",
        "backend", "gemm_n" and "points": [{"bytes", "ms", "bus_gb_s", "gemm_ms", "together_ms", "overlap_work"}]
        (collectives.py: over real ranks, each size alone and beside a gemm_n^3 GEMM; together and overlap null
        off a GPU)
  "nvml": {"available": bool, ...}  (nvml.summarize_samples); "throttled": bool (false when NVML was
        unavailable: then nvml.available is false and a note says throttling is unknown)
  "errors": [{"op", "point", "sm_budget", "error"}]   points that failed and were left out ("op":
        "section:NAME" when a whole section failed; then "partial" is true)
  "notes": [str, ...]           what was not measured and why
  "wall_s": number              the whole run (measurement; plots after)
  also written, not checked: "grid" (quick | default | tiny), "method" (timer, warmup, repeats, statistic,
        dtype, kernels, block_size, weight_layers, workspaces, kv_blocks, l2_mib), "plots" (PNG file names)

Where it is written: results/<run-id>/profile.json, or --out DIR/profile.json, or --out FILE.json (reference
profiles: results/reference/<gpu>/profile-<model>-tp<N>.json, the path search looks in).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from engine.plan import LAYER_OPS
from nanotune.errors import UserError

SCHEMA = "nanotune.profile/1"
PROFILE_FILE = "profile.json"
KINDS = ("gemm", "attention", "memory")
INPUTS = {"decode_attn": ("batch", "context"), "prefill_attn": ("tokens", "context")}  # others: ("tokens",)
SHAPE_KEYS = ("hidden", "heads", "kv_heads", "head_dim", "intermediate", "vocab", "num_layers", "params_per_gpu")
PAIR_NUMBERS = ("alone_a_ms", "alone_b_ms", "together_ms", "a_ms", "b_ms", "slowdown_a", "slowdown_b")


def load_profile(path: str | Path) -> dict:
    """Read and check a profile (a profile.json file or a run directory holding one) -> the dict.

    Raises UserError with one line naming the file and the first bad field."""
    path = Path(path)
    file = path / PROFILE_FILE if path.is_dir() else path
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise UserError(f"{file}: no such profile file") from None
    except OSError as e:
        raise UserError(f"{file}: cannot read ({e.strerror or e})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{file}:{e.lineno}: not valid JSON ({e.msg})") from None
    validate_profile(data, str(file))
    return data


def kv_cache_dtype_of(data: dict) -> str:
    """The KV cache dtype a profile measured attention over; "auto" for profiles older than the field."""
    return str(data.get("kv_cache_dtype") or "auto")


def _fail(where: str, field: str, msg: str):
    raise UserError(f"{where}: field '{field}': {msg}")


def _need(d: dict, key: str, types, where: str, field: str):
    if key not in d:
        raise UserError(f"{where}: missing field '{field}'")
    v = d[key]
    if not _is(v, _tuple(types)):
        _fail(where, field, f"expected {_names(types)}, got {_show(v)}")
    return v


def _is(v, types: tuple) -> bool:
    if isinstance(v, bool):  # JSON true/false are not numbers here, though Python's bool is an int
        return bool in types
    if isinstance(v, int) and float in types:
        return True
    return isinstance(v, types)


def _tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def _names(types) -> str:
    types = tuple(t for t in _tuple(types) if not (t is int and float in _tuple(types)))  # a number covers ints
    return " or ".join({int: "an integer", float: "a number", str: "a string", dict: "an object", list: "a list",
                        bool: "true/false", type(None): "null"}.get(t, t.__name__) for t in _tuple(types))


def _show(v) -> str:
    s = json.dumps(v) if not isinstance(v, (dict, list)) else type(v).__name__
    return s if len(s) <= 40 else s[:37] + "..."


def _positive(d: dict, key: str, where: str, field: str) -> float:
    v = _need(d, key, (int, float), where, field)
    if not math.isfinite(v) or v <= 0:
        _fail(where, field, f"expected a positive number, got {_show(v)}")
    return v


def _budget(d: dict, key: str, where: str, field: str) -> None:
    v = _need(d, key, (int, type(None)), where, field)
    if v is not None and v < 1:
        _fail(where, field, f"expected a positive integer or null, got {v}")


def validate_profile(data, where: str = "profile") -> None:
    """Check the fields search relies on; raise UserError naming the first problem."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a JSON object at the top level")
    schema = data.get("schema")
    if schema != SCHEMA:
        _fail(where, "schema", f"expected '{SCHEMA}', got {_show(schema)}")
    _need(data, "model", str, where, "model")
    if _need(data, "tp", int, where, "tp") < 1:
        _fail(where, "tp", f"expected an integer >= 1, got {data['tp']}")
    shapes = _need(data, "shapes", dict, where, "shapes")
    for k in SHAPE_KEYS:
        if _need(shapes, k, int, where, f"shapes.{k}") < 1:
            _fail(where, f"shapes.{k}", f"expected a positive integer, got {shapes[k]}")
    if "kv_cache_dtype" in data:
        from engine.config import KV_CACHE_DTYPES

        if data["kv_cache_dtype"] not in KV_CACHE_DTYPES:
            _fail(where, "kv_cache_dtype", f"expected one of {', '.join(KV_CACHE_DTYPES)}, "
                                           f"got {_show(data['kv_cache_dtype'])}")
    gpu = _need(data, "gpu", dict, where, "gpu")
    _need(gpu, "name", str, where, "gpu.name")
    _need(gpu, "num_sms", (int, type(None)), where, "gpu.num_sms")
    peaks = _need(data, "peaks", dict, where, "peaks")
    for k in ("bf16_tflops", "copy_gb_s"):
        _positive(peaks, k, where, f"peaks.{k}")
    ops = _need(data, "ops", dict, where, "ops")
    for op, entry in ops.items():
        _check_op(op, entry, where)
    for i, rec in enumerate(_need(data, "interference", list, where, "interference")):
        _check_pair(rec, where, f"interference[{i}]")
    _need(data, "micro_pair", (dict, type(None)), where, "micro_pair")
    launch = data.get("launch")
    if launch is not None:
        for i, p in enumerate(_need(launch, "points", list, where, "launch.points")):
            for k in ("eager_gap_ms", "graph_gap_ms"):
                if not isinstance(p, dict) or not isinstance(p.get(k), (int, float, type(None))):
                    _fail(where, f"launch.points[{i}].{k}", "expected a number or null")
    sustained = data.get("sustained")
    if sustained is not None:
        for i, p in enumerate(_need(sustained, "points", list, where, "sustained.points")):
            if not isinstance(p, dict) or p.get("bound") not in ("compute", "memory"):
                _fail(where, f"sustained.points[{i}].bound", "expected 'compute' or 'memory'")
            _positive(p, "sustained_layer_ms", where, f"sustained.points[{i}].sustained_layer_ms")
            if len(p.get("ops") or []) != len(p.get("points") or []):
                _fail(where, f"sustained.points[{i}].points", "expected one input point per op")
    power = data.get("power")
    if power is not None:
        _check_power(power, where)
    coll = _need(data, "collectives", dict, where, "collectives")
    for i, p in enumerate((coll.get("all_reduce") or {}).get("points") or []):
        if not isinstance(p, dict):
            _fail(where, f"collectives.all_reduce.points[{i}]", "expected an object")
        _positive(p, "bytes", where, f"collectives.all_reduce.points[{i}].bytes")
        _positive(p, "ms", where, f"collectives.all_reduce.points[{i}].ms")
    _need(data, "nvml", dict, where, "nvml")
    _need(data, "throttled", bool, where, "throttled")
    notes = _need(data, "notes", list, where, "notes")
    if not all(isinstance(n, str) for n in notes):
        _fail(where, "notes", "expected a list of strings")
    _need(data, "wall_s", (int, float), where, "wall_s")


def _check_op(op: str, entry, where: str) -> None:
    at = f"ops.{op}"
    if op not in LAYER_OPS:
        _fail(where, at, f"unknown op (known: {', '.join(LAYER_OPS)})")
    if not isinstance(entry, dict):
        _fail(where, at, f"expected an object, got {_show(entry)}")
    kind = _need(entry, "kind", str, where, f"{at}.kind")
    if kind not in KINDS:
        _fail(where, f"{at}.kind", f"expected one of {', '.join(KINDS)}, got {_show(kind)}")
    for i, p in enumerate(_need(entry, "points", list, where, f"{at}.points")):
        pat = f"{at}.points[{i}]"
        if not isinstance(p, dict):
            _fail(where, pat, f"expected an object, got {_show(p)}")
        for k in INPUTS.get(op, ("tokens",)):
            v = _need(p, k, int, where, f"{pat}.{k}")
            if v < (0 if k == "context" else 1):
                _fail(where, f"{pat}.{k}", f"expected {'>= 0' if k == 'context' else '>= 1'}, got {v}")
        _budget(p, "sm_budget", where, f"{pat}.sm_budget")
        _positive(p, "ms", where, f"{pat}.ms")


def _check_pair(rec, where: str, at: str) -> None:
    if not isinstance(rec, dict):
        _fail(where, at, f"expected an object, got {_show(rec)}")
    for k in ("a", "b"):
        if _need(rec, k, str, where, f"{at}.{k}") not in LAYER_OPS:
            _fail(where, f"{at}.{k}", f"unknown op {_show(rec[k])}")
        _need(rec, f"{k}_point", dict, where, f"{at}.{k}_point")
    _budget(rec, "b_sm_budget", where, f"{at}.b_sm_budget")
    for k in PAIR_NUMBERS:
        _positive(rec, k, where, f"{at}.{k}")


def _check_power(power, where: str) -> None:
    """The power section (power.py), optional like launch and sustained: older profiles lack it."""
    if not isinstance(power, dict):
        _fail(where, "power", f"expected an object or null, got {_show(power)}")
    gemm = _need(power, "gemm", dict, where, "power.gemm")
    _positive(gemm, "tflops", where, "power.gemm.tflops")
    for i, r in enumerate(_need(power, "read", list, where, "power.read")):
        if not isinstance(r, dict):
            _fail(where, f"power.read[{i}]", f"expected an object, got {_show(r)}")
        _need(r, "kernel", str, where, f"power.read[{i}].kernel")
        _budget(r, "programs", where, f"power.read[{i}].programs")
        _positive(r, "gb_s", where, f"power.read[{i}].gb_s")
    for i, x in enumerate(_need(power, "together", list, where, "power.together")):
        if not isinstance(x, dict):
            _fail(where, f"power.together[{i}]", f"expected an object, got {_show(x)}")
        for k in ("gemm_fraction", "read_fraction", "sum"):
            _positive(x, k, where, f"power.together[{i}].{k}")
