"""Benchmark metrics from per-request records, under vLLM `bench serve`'s key names where the meaning is
the same, so a nanotune result and a vLLM result compare key by key.

Definitions (all latencies in ms; only completed requests enter throughput and latency figures):

* `duration`: seconds from t0 (after warm-up, when the first request may be sent) to the last request's end
  (or to the interruption of a partial run).
* `total_input_tokens` / `total_output_tokens`: prompt / generated tokens of completed requests.
* `request_throughput`, `output_throughput`, `total_token_throughput`: those over `duration`.
* TTFT: send -> first token (client queue time before the send is `*_queue_ms`, kept apart).
* TPOT (vLLM): (e2e - ttft) / (output_len - 1) per request; requests with one output token are left out.
* ITL: every gap between consecutive tokens (or streamed chunks) of every request, pooled.
* E2EL: send -> last token.
* `request_goodput`: completed requests meeting every given SLO (ttft/tpot/e2el, ms) per second, as vLLM
  (a one-token request's TPOT counts as 0); `slo_attainment`: their share of all sent requests.
* `optimal_total_token_throughput` = peak FLOP/s / (2 * params) (NanoFlow Eq. 5);
  `efficiency` = total_token_throughput / optimal.
* `normalized_latency_ms` (NanoFlow): mean over completed requests of e2e latency / output tokens.
* `steady_*`: see nanotune.bench.steady.
"""

from __future__ import annotations

import re

from nanotune.bench.records import FAILED, INTERRUPTED, NOT_SENT, RequestRecord
from nanotune.bench.stats import summarize
from nanotune.bench.steady import steady_state_metrics
from nanotune.results.peak import optimal_total_token_throughput

SLO_KEYS = ("ttft", "tpot", "e2el")
PERCENTILES = (50, 90, 99)


def parse_goodput(specs) -> dict[str, float]:
    """`["ttft:200 tpot:50", "e2el:5000"]` -> {"ttft": 200.0, ...} (ms). Accepts space- or comma-separated
    items, as vLLM's `--goodput ttft:200 tpot:50`. Raises ValueError naming the bad item."""
    slos: dict[str, float] = {}
    for spec in specs or ():
        for item in re.split(r"[\s,]+", spec.strip()):
            if not item:
                continue
            name, sep, value = item.partition(":")
            if not sep or name not in SLO_KEYS:
                raise ValueError(f"--goodput item '{item}': expected NAME:MS with NAME one of "
                                 f"{', '.join(SLO_KEYS)}")
            try:
                ms = float(value)
            except ValueError:
                raise ValueError(f"--goodput item '{item}': '{value}' is not a number of ms") from None
            if ms <= 0:
                raise ValueError(f"--goodput item '{item}': the limit must be positive")
            slos[name] = ms
    return slos


def meets_slos(r: RequestRecord, slos: dict[str, float]) -> bool:
    """A completed request within every SLO given (vLLM: a one-token output's TPOT is 0)."""
    if not r.is_ok:
        return False
    values = {"ttft": r.ttft_s, "tpot": r.tpot_s or 0.0, "e2el": r.e2el_s}
    return all(values[k] is not None and values[k] * 1e3 <= limit for k, limit in slos.items())


def compute_metrics(records: list[RequestRecord], duration: float, num_params: int | None = None,
                    peak_flops: float | None = None, slos: dict[str, float] | None = None,
                    percentiles=PERCENTILES) -> dict:
    """Every metric of one run (see the module docstring for definitions)."""
    ok = [r for r in records if r.is_ok]
    total_in = sum(r.prompt_len for r in ok)
    total_out = sum(r.output_len for r in ok)
    per_s = lambda x: x / duration if duration > 0 else None
    m = {
        "completed": len(ok),
        "failed": sum(r.status == FAILED for r in records),
        "incomplete": sum(r.status in (INTERRUPTED, NOT_SENT) for r in records),
        "num_short": sum(r.is_short for r in ok),
        "duration": duration,
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": per_s(len(ok)),
        "output_throughput": per_s(total_out),
        "total_token_throughput": per_s(total_in + total_out),
    }
    if slos:
        good = sum(meets_slos(r, slos) for r in ok)
        sent = sum(r.status != NOT_SENT for r in records)
        m["request_goodput"] = per_s(good)
        m["slo_attainment"] = good / sent if sent else None
    optimal = None
    if num_params and peak_flops:
        optimal = optimal_total_token_throughput(peak_flops, num_params)
    m["optimal_total_token_throughput"] = optimal
    tt = m["total_token_throughput"]
    m["efficiency"] = tt / optimal if optimal and tt is not None else None
    norm = [r.e2el_s / r.output_len for r in ok if r.output_len > 0]
    m["normalized_latency_ms"] = 1e3 * sum(norm) / len(norm) if norm else None

    m.update(summarize([r.ttft_s for r in ok if r.ttft_s is not None], "ttft_ms", percentiles, 1e3))
    m.update(summarize([r.tpot_s for r in ok if r.tpot_s is not None], "tpot_ms", percentiles, 1e3))
    m.update(summarize([g for r in ok for g in r.itls_s], "itl_ms", percentiles, 1e3))
    m.update(summarize([r.e2el_s for r in ok if r.e2el_s is not None], "e2el_ms", percentiles, 1e3))
    m.update(summarize([r.queue_s for r in records if r.queue_s is not None], "queue_ms", (99,), 1e3))

    m.update(steady_state_metrics(records, duration))
    st = m["steady_total_token_throughput"]
    m["steady_efficiency"] = st / optimal if optimal and st is not None else None
    return m


def run_duration(records: list[RequestRecord], stopped_at: float | None = None) -> float:
    """Seconds from t0 to the last end (or to `stopped_at` for an interrupted run)."""
    if stopped_at is not None:
        return stopped_at
    ends = [r.end_s for r in records if r.end_s is not None]
    return max(ends) if ends else 0.0

