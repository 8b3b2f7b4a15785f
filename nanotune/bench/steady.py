"""Steady-state throughput: the span of a run where the batch is full, excluding ramp-up and drain.

Whole-run throughput of a short benchmark is dragged down (or up) by its two ends: at the start the batch
is still filling (prefill of the first requests, little decoding) and at the end the last requests decode
in a batch that only shrinks. The rule used here, from per-request times only (so it works the same for
every backend, the HTTP client included):

* "decoding" at time t = requests whose first token has arrived and that have not finished;
* its typical level L = the time-weighted median of that count between the first first token and the
  last end (a median, not the peak: one spike must not move the window);
* the window runs from the first time the count reaches 0.9 L (ramp-up over) to the last time it is
  still >= 0.9 L (drain begins); dips inside the window stay in it;
* tokens in the window: each output token whose arrival time falls inside it (a streamed chunk of k tokens
  counts k), plus each request's prompt tokens at its first token's time (when its prefill completed);
* reported only if the window covers at least 5% of the run; otherwise the keys are null.

When every request fits in the batch at once (a short offline run), the batch never mixes admissions and
completions: the window is then the decode phase after the prefill burst, and steady throughput is the
engine's decode rate, below the whole-run figure that the prefill burst inflates. With more requests than
fit, it is the saturated middle of the run, which is what NanoFlow-style offline throughput means.
"""

from __future__ import annotations

import itertools

from nanotune.bench.records import RequestRecord

LEVEL_FRACTION = 0.9
MIN_WINDOW_FRACTION = 0.05


def _decoding_segments(records: list[RequestRecord]) -> list[tuple[float, float, int]]:
    """Piecewise-constant decoding count as (start, end, count) segments."""
    deltas: dict[float, int] = {}
    for r in records:
        deltas[r.first_token_s] = deltas.get(r.first_token_s, 0) + 1
        deltas[r.end_s] = deltas.get(r.end_s, 0) - 1
    times = sorted(deltas)
    segments, count = [], 0
    for a, b in itertools.pairwise(times):
        count += deltas[a]
        segments.append((a, b, count))
    return segments


def _weighted_median(segments: list[tuple[float, float, int]]) -> float:
    total = sum(b - a for a, b, _ in segments)
    acc = 0.0
    for a, b, c in sorted(segments, key=lambda s: s[2]):
        acc += b - a
        if acc >= total / 2:
            return float(c)
    return 0.0


def steady_window(records: list[RequestRecord], duration: float) -> tuple[float, float] | None:
    """(start, end) of the steady-state window in seconds from t0, or None when the run has none."""
    done = [r for r in records if r.is_ok and r.first_token_s is not None and r.end_s is not None]
    segments = _decoding_segments(done)
    if len(done) < 2 or duration <= 0 or not segments:
        return None
    threshold = LEVEL_FRACTION * _weighted_median(segments)
    inside = [(a, b) for a, b, c in segments if c >= threshold and c > 0]
    if not inside:
        return None
    start, end = inside[0][0], inside[-1][1]
    if end - start < MIN_WINDOW_FRACTION * duration:
        return None
    return start, end


def steady_state_metrics(records: list[RequestRecord], duration: float) -> dict:
    """`steady_*` keys: window bounds and total/output token throughput inside it (null when no window)."""
    window = steady_window(records, duration)
    keys = ["steady_window_start_s", "steady_window_end_s", "steady_output_throughput",
            "steady_total_token_throughput"]
    if window is None:
        return dict.fromkeys(keys)
    a, b = window
    out_tokens = 0.0
    in_tokens = 0
    for r in records:
        if not r.is_ok or not r.token_times:
            continue
        per_chunk = r.output_len / len(r.token_times)  # 1 for engines; k tokens per chunk for endpoints
        out_tokens += per_chunk * sum(1 for t in r.token_times if a <= t <= b)
        if a <= r.first_token_s <= b:
            in_tokens += r.prompt_len
    span = b - a
    return dict(zip(keys, [a, b, out_tokens / span, (out_tokens + in_tokens) / span], strict=True))
