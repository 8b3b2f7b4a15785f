"""Length filters applied to a trace before it is served, recorded in the trace's meta.

- `none`: keep everything (the default for generation: the calibrated datasets reproduce the raw files,
  ShareGPT's 241k-token prompt included, so that their statistics match the reference traces).
- `vllm`: vLLM's benchmark rule for ShareGPT: drop a request whose prompt or output has fewer than 4
  tokens, whose prompt has more than 1024, or whose prompt + output exceeds 2048.
- `max-len:N`: fit a model context of N tokens: when prompt + output > N, truncate the prompt to
  N - output (keeping its first tokens); a request whose output alone needs N or more tokens is dropped,
  since no prompt would be left.

meta["filter"] = {"spec": ..., "dropped": ..., "truncated": ...} says what was applied and what it did.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workloads.errors import TraceError
from workloads.trace import Trace, TraceRequest

VLLM_MIN_LEN = 4
VLLM_MAX_PROMPT_LEN = 1024
VLLM_MAX_TOTAL_LEN = 2048
FILTER_NAMES = ("none", "vllm", "max-len:N")


@dataclass(frozen=True)
class Filter:
    """A parsed filter spec. max_len is set only for max-len:N."""

    name: str
    max_len: int | None = None

    @property
    def spec(self) -> str:
        return f"max-len:{self.max_len}" if self.name == "max-len" else self.name

    def apply(self, prompt: np.ndarray, output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(keep mask, prompt lengths after truncation) for arrays of lengths."""
        prompt, output = np.asarray(prompt), np.asarray(output)
        if self.name == "none":
            return np.ones(len(prompt), dtype=bool), prompt
        if self.name == "vllm":
            keep = (
                (prompt >= VLLM_MIN_LEN)
                & (output >= VLLM_MIN_LEN)
                & (prompt <= VLLM_MAX_PROMPT_LEN)
                & (prompt + output <= VLLM_MAX_TOTAL_LEN)
            )
            return keep, prompt
        room = self.max_len - output  # prompt tokens that still fit
        return room >= 1, np.minimum(prompt, np.maximum(room, 0))


def parse_filter(spec: str | Filter | None) -> Filter:
    """'none' | 'vllm' | 'max-len:N' (N a positive integer) -> Filter; anything else is a TraceError."""
    if isinstance(spec, Filter):
        return spec
    text = "none" if spec is None else str(spec).strip().lower()
    if text in ("none", "vllm"):
        return Filter(text)
    if text.startswith("max-len:"):
        value = text.split(":", 1)[1]
        if value.isdigit() and int(value) >= 1:
            return Filter("max-len", int(value))
    raise TraceError(f"bad filter '{spec}': expected none, vllm or max-len:N with N a positive integer")


def apply_filter(trace: Trace, spec: str | Filter | None) -> Trace:
    """A new trace with the filter applied and meta["filter"] recording the counts."""
    flt = parse_filter(spec)
    keep, new_prompt = flt.apply(trace.prompt_lens, trace.output_lens)
    requests, truncated = [], 0
    for request, kept, length in zip(trace.requests, keep, new_prompt, strict=True):
        if not kept:
            continue
        if length < request.prompt_len:
            truncated += 1
            ids = None if request.prompt_ids is None else request.prompt_ids[: int(length)]
            request = TraceRequest(request.arrival_s, int(length), request.output_len, ids)
        requests.append(request)
    record = {"spec": flt.spec, "dropped": int(len(trace) - len(requests)), "truncated": truncated}
    return Trace(
        requests, {**trace.meta, "filter": _merge(trace.meta.get("filter"), record), "count": len(requests)}
    )


def _merge(previous: dict | None, record: dict) -> dict:
    """Filters applied one after another are recorded in order (spec 'a,b'), counts added."""
    if not previous or previous.get("spec") in (None, "none"):
        return record
    if record["spec"] == "none":
        return previous
    return {
        "spec": f"{previous['spec']},{record['spec']}",
        "dropped": previous.get("dropped", 0) + record["dropped"],
        "truncated": previous.get("truncated", 0) + record["truncated"],
    }
