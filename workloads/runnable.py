"""Requests a model cannot serve, dropped before a run and counted by reason, never failed during it.

A request cannot run when its prompt is empty (no token to prefill), when it asks for no output (BurstGPT's
failed rows are dropped by its reader; any other source is caught here), or when prompt + output exceeds the
model's context (`max_model_len`, which the caller takes from the engine's owner of that figure).

`drop_unrunnable` records meta["unrunnable"] = {"max_model_len": M, "dropped": {reason: count}} with the
reasons of DROP_REASONS; `request_summary` and `summary_line` are the request statistics every tool prints
and stores, so two tools given the same workload can be seen to run the same requests.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

from workloads.trace import Trace

DROP_REASONS = {"empty_prompt": "empty prompt", "empty_output": "no output tokens",
                "over_max_model_len": "over max_model_len"}
"""key in meta["unrunnable"]["dropped"] -> words for tables."""


def why_unrunnable(prompt_len: int, output_len: int, max_model_len: int | None) -> str | None:
    """The DROP_REASONS key saying why this request cannot run, or None when it can."""
    if prompt_len < 1:
        return "empty_prompt"
    if output_len < 1:
        return "empty_output"
    if max_model_len is not None and prompt_len + output_len > max_model_len:
        return "over_max_model_len"
    return None


def drop_unrunnable(trace: Trace, max_model_len: int | None) -> Trace:
    """The trace without the requests that cannot run (max_model_len None: no context limit is known)."""
    counts = dict.fromkeys(DROP_REASONS, 0)
    kept = []
    for r in trace.requests:
        reason = why_unrunnable(int(r.prompt_len), int(r.output_len), max_model_len)
        if reason is None:
            kept.append(r)
        else:
            counts[reason] += 1
    record = {"max_model_len": max_model_len, "dropped": counts}
    return Trace(kept, {**trace.meta, "count": len(kept), "unrunnable": record})


def num_dropped(meta: dict) -> int:
    return sum((meta.get("unrunnable") or {}).get("dropped", {}).values())


def describe_dropped(meta: dict) -> str:
    """'0', or '3 (2 over max_model_len 8192, 1 empty prompt)'."""
    record = meta.get("unrunnable") or {}
    counts = {k: v for k, v in record.get("dropped", {}).items() if v}
    if not counts:
        return "0"
    limit = record.get("max_model_len")
    parts = [f"{v:,} {DROP_REASONS.get(k, k)}" + (f" {limit:,}" if k == "over_max_model_len" else "")
             for k, v in counts.items()]
    return f"{sum(counts.values()):,} ({', '.join(parts)})"


def request_summary(lengths: Iterable[tuple[int, int]], meta: dict) -> dict:
    """Count and mean lengths of the requests that run, with the spec, filter and drops that made them."""
    lengths = list(lengths)
    flt = meta.get("filter") or {}
    return {
        "workload": meta.get("workload"),
        "filter": flt.get("spec", "none"),
        "num_requests": len(lengths),
        "mean_prompt_len": statistics.fmean(p for p, _ in lengths) if lengths else None,
        "mean_output_len": statistics.fmean(o for _, o in lengths) if lengths else None,
        "num_dropped": num_dropped(meta),
        "dropped": dict((meta.get("unrunnable") or {}).get("dropped", {})),
        "max_model_len": (meta.get("unrunnable") or {}).get("max_model_len"),
    }


def summary_line(summary: dict) -> str:
    """One line for a terminal: 'workload sharegpt (filter vllm): 1,000 requests, mean 111.2 in / 215.8 out
    tokens; dropped 0'."""
    mean = ("" if summary["mean_prompt_len"] is None else
            f", mean {summary['mean_prompt_len']:.1f} in / {summary['mean_output_len']:.1f} out tokens")
    dropped = describe_dropped({"unrunnable": {"dropped": summary["dropped"],
                                               "max_model_len": summary["max_model_len"]}})
    return (f"workload {summary['workload']} (filter {summary['filter']}): "
            f"{summary['num_requests']:,} requests{mean}; dropped {dropped}")
