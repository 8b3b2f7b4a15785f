"""Seeded, reproducible synthetic traces: `generate(name, n, seed, **params) -> Trace`.

| name        | lengths                                                                                  |
|-------------|------------------------------------------------------------------------------------------|
| `constant`  | every request `input_len` in, `output_len` out (default 1024 / 512: NanoFlow's headline) |
| `random`    | uniform integers around `input_len` / `output_len`, see the range conventions below      |
| `sharegpt`  | calibrated to NanoFlow's ShareGPT trace (58,787 conversations, unfiltered)                |
| `lmsys`     | calibrated to NanoFlow's LMSYS-Chat-1M sample (100,000 conversations)                     |
| `splitwise` | calibrated to the Azure 2023 conversation trace of the Splitwise paper (19,366 requests)  |

Range ratio r of `random`, two conventions because the two best known benchmarks disagree:
- `range_style="vllm"` (default): lengths uniform in [L(1 - r), L(1 + r)], 0 <= r < 1, centred on L
  (vLLM `bench serve --random-range-ratio`; r = 0 is constant).
- `range_style="sglang"`: lengths uniform in [max(L r, 1), L], 0 <= r <= 1, L is the maximum
  (SGLang `bench_serving --random-range-ratio`; its default r = 0 means anything from 1 to L).

The calibrated ones draw from `workloads/data/calibration.json` (method in `workloads.calibration`); they
never read the reference files. All generators are offline (arrivals at 0) until arrivals are assigned
(`workloads.arrivals`); `measured_arrivals("splitwise")` gives the real trace's rate and CV.
Lengths use the random stream `seed`, arrivals their own, so the same seed gives the same lengths
whatever the arrival process. With a filter that drops requests, drawing continues until n survive.
"""

from __future__ import annotations

import math

import numpy as np

from workloads.calibration import calibrated_names, dataset_entry, sample_lengths
from workloads.errors import TraceError
from workloads.filters import parse_filter
from workloads.trace import Trace, TraceRequest

DEFAULT_INPUT_LEN = 1024
DEFAULT_OUTPUT_LEN = 512
RANGE_STYLES = ("vllm", "sglang")
MAX_DRAW_ROUNDS = 64
"""Give up topping up after this many rounds (a filter that rejects almost everything is a user error)."""


def dataset_names() -> tuple[str, ...]:
    return ("constant", "random", *calibrated_names())


def constant(
    n: int,
    rng: np.random.Generator,
    *,
    input_len: int = DEFAULT_INPUT_LEN,
    output_len: int = DEFAULT_OUTPUT_LEN,
) -> tuple[np.ndarray, np.ndarray]:
    _check_length("input_len", input_len)
    _check_length("output_len", output_len)
    return np.full(n, input_len, dtype=np.int64), np.full(n, output_len, dtype=np.int64)


def length_range(length: int, range_ratio: float, range_style: str) -> tuple[int, int]:
    """Inclusive [low, high] of the `random` generator (conventions in the module docstring)."""
    _check_length("length", length)
    if range_style == "vllm":
        if not 0 <= range_ratio < 1:
            raise TraceError(f"range_ratio must be in [0, 1) with range_style vllm, got {range_ratio}")
        return max(int(length * (1 - range_ratio)), 1), int(length * (1 + range_ratio))
    if range_style == "sglang":
        if not 0 <= range_ratio <= 1:
            raise TraceError(f"range_ratio must be in [0, 1] with range_style sglang, got {range_ratio}")
        return max(int(length * range_ratio), 1), length
    raise TraceError(f"unknown range_style '{range_style}': expected one of {', '.join(RANGE_STYLES)}")


def uniform(
    n: int,
    rng: np.random.Generator,
    *,
    input_len: int = DEFAULT_INPUT_LEN,
    output_len: int = DEFAULT_OUTPUT_LEN,
    range_ratio: float = 0.0,
    range_style: str = "vllm",
) -> tuple[np.ndarray, np.ndarray]:
    """The `random` generator (named `uniform` here so as not to shadow the stdlib module)."""
    p_low, p_high = length_range(input_len, range_ratio, range_style)
    o_low, o_high = length_range(output_len, range_ratio, range_style)
    return rng.integers(p_low, p_high + 1, size=n), rng.integers(o_low, o_high + 1, size=n)


def measured_arrivals(name: str) -> dict | None:
    """{"rate", "cv", "duration_s"} of a calibrated dataset's real timestamps, or None if it had none."""
    if name not in calibrated_names():
        return None
    return dataset_entry(name)["arrivals"]


def generate(name: str, n: int, seed: int = 0, *, filter: str | None = "none", **params) -> Trace:
    """n requests of dataset `name`, offline, after `filter` (see `workloads.filters`)."""
    names = dataset_names()
    if name not in names:
        raise TraceError(f"unknown dataset '{name}': expected one of {', '.join(names)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise TraceError(f"number of requests must be a non-negative integer, got {n}")
    draw = _drawer(name, params)
    flt = parse_filter(filter)
    rng = np.random.default_rng(seed)
    prompts, outputs, was_cut = [], [], []
    num_drawn = num_kept = 0
    for _ in range(MAX_DRAW_ROUNDS):
        if num_kept >= n or (num_kept == 0 and num_drawn >= 1000):
            break
        # First round: exactly n (so an unfiltered trace is one stratified sample); top-ups: what the
        # observed keep rate needs plus 20%, at most 16 n at a time.
        needed = (n - num_kept) * 1.2 * num_drawn / max(num_kept, 1)
        batch = n if num_drawn == 0 else int(min(max(64, math.ceil(needed)), 16 * n))
        prompt, output = draw(batch, rng)
        keep, cut = flt.apply(prompt, output)
        prompts.append(cut[keep])
        outputs.append(output[keep])
        was_cut.append((cut < prompt)[keep])
        num_drawn += batch
        num_kept += int(np.count_nonzero(keep))
    if num_kept < n:
        raise TraceError(
            f"filter '{flt.spec}' keeps {num_kept} of {num_drawn} '{name}' draws; cannot reach {n}"
        )
    prompt = np.concatenate(prompts)[:n] if prompts else np.zeros(0, dtype=np.int64)
    output = np.concatenate(outputs)[:n] if outputs else np.zeros(0, dtype=np.int64)
    truncated = int(np.count_nonzero(np.concatenate(was_cut)[:n])) if was_cut else 0
    requests = [TraceRequest(0.0, int(p), int(o)) for p, o in zip(prompt, output, strict=True)]
    meta = {
        "source": _source(name),
        "generator": name,
        "params": _params(name, params),
        "seed": seed,
        "count": len(requests),
        # dropped: draws the filter rejected on the way to n survivors
        "filter": {"spec": flt.spec, "dropped": num_drawn - num_kept, "truncated": truncated},
        "arrivals": {"mode": "offline"},
    }
    return Trace(requests, meta)


def _drawer(name: str, params: dict):
    if name == "constant":
        _only(name, params, ("input_len", "output_len"))
        return lambda k, rng: constant(k, rng, **params)
    if name == "random":
        _only(name, params, ("input_len", "output_len", "range_ratio", "range_style"))
        uniform(0, np.random.default_rng(0), **params)  # check the parameters once, before drawing
        return lambda k, rng: uniform(k, rng, **params)
    _only(name, params, ())
    return lambda k, rng: sample_lengths(name, k, rng)


def _only(name: str, params: dict, allowed: tuple[str, ...]) -> None:
    extra = sorted(set(params) - set(allowed))
    if extra:
        takes = ", ".join(allowed) if allowed else "no parameters"
        raise TraceError(f"dataset '{name}' does not take {', '.join(extra)} (it takes {takes})")


def _params(name: str, params: dict) -> dict:
    if name == "constant":
        return {"input_len": DEFAULT_INPUT_LEN, "output_len": DEFAULT_OUTPUT_LEN, **params}
    if name == "random":
        defaults = {"input_len": DEFAULT_INPUT_LEN, "output_len": DEFAULT_OUTPUT_LEN, "range_ratio": 0.0}
        return {**defaults, "range_style": "vllm", **params}
    source = dataset_entry(name)["source"]
    return {"calibration": {"file": source["file"], "rows": source["rows"], "sha256": source["sha256"]}}


def _source(name: str) -> str:
    if name in ("constant", "random"):
        return "synthetic"
    source = dataset_entry(name)["source"]
    return f"synthetic, calibrated to {source['file']}: {source['description']}"


def _check_length(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise TraceError(f"{name} must be a positive integer, got {value}")
