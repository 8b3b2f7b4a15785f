"""Replays a list of requests through a backend: arrivals, --max-concurrency, Ctrl-C, crashes.

One loop for every backend: send what has arrived (and fits under the concurrency limit), then let the
backend work (`poll`) until the next arrival at the latest. Nothing is lost: each request ends as ok,
failed (with its error), interrupted (sent, then Ctrl-C) or not_sent.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from nanotune.bench.backends.base import Backend
from nanotune.bench.records import (
    FAILED,
    INTERRUPTED,
    NOT_SENT,
    OK,
    RUNNING,
    BenchRequest,
    RequestRecord,
)

IDLE_POLL_S = 0.05
PROGRESS_EVERY_S = 0.25


@dataclass
class Phase:
    """What one pass over the requests produced."""

    records: list[RequestRecord]
    duration: float  # t0 -> last end, or -> the interruption
    is_interrupted: bool = False  # Ctrl-C
    error: str | None = None  # the backend itself broke (not one request)

    @property
    def is_partial(self) -> bool:
        return self.is_interrupted or self.error is not None


@dataclass
class Progress:
    """Snapshot for the live view."""

    elapsed_s: float
    num_done: int
    num_failed: int
    num_total: int
    num_output_tokens: int
    num_total_tokens: int
    stats: dict


def drive(backend: Backend, requests: list[BenchRequest], max_concurrency: int | None = None,
          on_progress: Callable[[Progress], None] | None = None) -> Phase:
    records = [RequestRecord.for_request(r) for r in requests]
    order = sorted(range(len(requests)), key=lambda i: requests[i].arrival_s)
    t0 = time.perf_counter()
    backend.begin(t0)
    num_sent = num_ended = num_failed = 0
    next_progress = 0.0
    is_interrupted, error = False, None
    now = 0.0
    limit = max_concurrency or len(requests)
    freed: deque[float] = deque()  # when concurrency slots freed up, oldest first
    try:
        while num_ended < len(requests):
            now = time.perf_counter() - t0
            while (num_sent < len(order) and requests[order[num_sent]].arrival_s <= now
                   and num_sent - num_ended < limit):
                i = order[num_sent]
                records[i].status = RUNNING
                # due: the request could have gone out at its arrival, or when a slot freed if it waited for
                # one; a synchronous backend (the in-process engine) stamps its send with this, so the step
                # that ran meanwhile counts in TTFT, not as client queue time
                slot = freed.popleft() if num_sent >= limit and freed else 0.0
                records[i].due_s = max(requests[i].arrival_s, slot)
                backend.submit(requests[i], records[i])
                num_sent += 1
            if num_sent < len(order) and num_sent - num_ended < limit:
                wait = requests[order[num_sent]].arrival_s - (time.perf_counter() - t0)
                timeout = min(max(wait, 0.0), PROGRESS_EVERY_S)
            else:
                timeout = IDLE_POLL_S
            for rec in backend.poll(timeout):
                num_ended += 1
                num_failed += rec.status == FAILED
                if max_concurrency:
                    freed.append(rec.end_s if rec.end_s is not None else time.perf_counter() - t0)
            now = time.perf_counter() - t0
            if on_progress is not None and now >= next_progress:
                next_progress = now + PROGRESS_EVERY_S
                on_progress(_progress(now, records, num_ended, num_failed, backend))
    except KeyboardInterrupt:
        is_interrupted = True
    except Exception as e:  # the backend broke: its in-flight requests fail with this error
        error = f"{type(e).__name__}: {e}"
    if is_interrupted or error:
        now = time.perf_counter() - t0
        try:
            backend.abort()
        except Exception:  # already stopping; what was measured matters more than a clean abort
            pass
    for rec in records:
        if rec.status == RUNNING and rec.send_s is None:  # handed over, still in the client's queue
            rec.status = NOT_SENT
        elif rec.status == RUNNING:
            if error:
                rec.fail(now, error)
            else:
                rec.status = INTERRUPTED
    if is_interrupted or error:
        duration = now
    else:
        duration = max((r.end_s for r in records if r.end_s is not None), default=0.0)
    if on_progress is not None:
        try:
            on_progress(_progress(duration, records, num_ended, num_failed, backend))
        except KeyboardInterrupt:  # a second Ctrl-C while finishing: keep what was measured
            is_interrupted = True
    return Phase(records=records, duration=duration, is_interrupted=is_interrupted, error=error)


def _progress(now: float, records: list[RequestRecord], num_ended: int, num_failed: int,
              backend: Backend) -> Progress:
    out = sum(r.output_len for r in records if r.status in (OK, RUNNING, INTERRUPTED))
    prompt = sum(r.prompt_len for r in records if r.first_token_s is not None)
    return Progress(elapsed_s=now, num_done=num_ended, num_failed=num_failed, num_total=len(records),
                    num_output_tokens=out, num_total_tokens=out + prompt, stats=backend.stats())

