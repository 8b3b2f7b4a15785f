"""Timing one op, or two ops at once on two CUDA streams: warm-up, repeats, medians.

On a GPU each repeat sits between two CUDA events, and all repeats are enqueued while the GPU spins in a
short sleep kernel (torch.cuda._sleep) queued first: otherwise a kernel shorter than its Python launch (the
decode wrapper costs tens of microseconds on the host) would be timed as the host's launch gap. Kernels of a
few microseconds run `group` calls per repeat so event resolution does not dominate.

On CPU (the tests, `--device cpu`) ops are synchronous and a host clock times each call. There are no streams,
so `pair` runs the two ops one after the other and says so (concurrent=False).

Every call gets a rotation index i; the caller's fn(i) picks weights, buffers and KV regions from it so that
repeats cycle through more bytes than the L2 cache holds.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

cuda = torch.cuda  # what the GPU path calls; tests swap in host-clock fakes to run it on CPU
GPU_CLOCK_HZ = 2.0e9  # for the sleep length only: a slower clock sleeps longer, which is harmless
MAX_SLEEP_S = 0.25
MAX_QUEUED = 400  # calls queued behind one sleep: CUDA's launch queue holds about a thousand entries


@dataclass(frozen=True)
class Stats:
    """Summary of the per-repeat times (ms) of one measurement."""

    ms: float  # median
    ms_min: float
    ms_p90: float
    repeats: int

    def to_dict(self) -> dict:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def summarize(samples_ms: list[float]) -> Stats:
    """Median (robust to a stray slow repeat), min and 90th percentile (nearest rank) of the samples."""
    if not samples_ms:
        raise ValueError("no samples to summarize")
    xs = sorted(samples_ms)
    p90 = xs[min(len(xs) - 1, math.ceil(0.9 * len(xs)) - 1)]
    return Stats(ms=statistics.median(xs), ms_min=xs[0], ms_p90=p90, repeats=len(xs))


@dataclass(frozen=True)
class PairStats:
    """Two ops started together: each one's span on its own stream and the makespan (fork to join)."""

    together: Stats  # makespan
    a: Stats
    b: Stats
    concurrent: bool  # False on CPU: the two ran one after the other


def group_size(est_ms: float, min_rep_ms: float, max_group: int = 64) -> int:
    """Calls per timed repeat so that one repeat lasts at least min_rep_ms."""
    if est_ms <= 0:
        return max_group
    return max(1, min(max_group, math.ceil(min_rep_ms / est_ms)))


class Timer:
    def __init__(self, device: torch.device, warmup: int = 5, repeats: int = 25, min_rep_ms: float = 0.05):
        self.device = torch.device(device)
        self.is_cuda = self.device.type == "cuda"
        self.warmup, self.repeats, self.min_rep_ms = max(1, warmup), max(1, repeats), min_rep_ms
        self._streams = None
        self._has_sleep = hasattr(cuda, "_sleep")

    # ---- one op -------------------------------------------------------------------------------------
    def time(self, fn: Callable[[int], None]) -> Stats:
        """Median ms of one fn(i) call over the repeats (fn(i) may issue several kernels)."""
        for i in range(self.warmup):
            fn(i)
        if not self.is_cuda:
            samples = []
            for r in range(self.repeats):
                t0 = time.perf_counter()
                fn(self.warmup + r)
                samples.append(1e3 * (time.perf_counter() - t0))
            return summarize(samples)
        est_ms, host_s = self._calibrate(fn)
        group = group_size(est_ms, self.min_rep_ms, max_group=max(1, MAX_QUEUED // self.repeats))
        marks, i = [], self.warmup + 6
        self._sleep(host_s * group * self.repeats)
        for _ in range(self.repeats):
            start, end = self._event(), self._event()
            start.record()
            for _ in range(group):
                fn(i)
                i += 1
            end.record()
            marks.append((start, end))
        cuda.synchronize(self.device)
        return summarize([s.elapsed_time(e) / group for s, e in marks])

    def _calibrate(self, fn, n: int = 3) -> tuple[float, float]:
        """(GPU ms per call, host seconds per launch): n calls on the host clock, then n behind a sleep so
        that the events see GPU time, not launch gaps."""
        cuda.synchronize(self.device)
        t0 = time.perf_counter()
        for i in range(n):
            fn(self.warmup + i)
        host_s = (time.perf_counter() - t0) / n
        cuda.synchronize(self.device)
        start, end = self._event(), self._event()
        self._sleep(host_s * n)
        start.record()
        for i in range(n):
            fn(self.warmup + n + i)
        end.record()
        cuda.synchronize(self.device)
        return start.elapsed_time(end) / n, host_s

    # ---- two ops at once ----------------------------------------------------------------------------
    def pair(self, fa: Callable[[int], None], fb: Callable[[int], None], streams=None) -> PairStats:
        """fa on stream 0 and fb on stream 1, released together by one event (fork) and joined after.
        streams: the two streams to use (e.g. with priorities or of green contexts); default two plain ones."""
        if not self.is_cuda:
            tog, sa, sb = [], [], []
            for r in range(self.warmup + self.repeats):
                t0 = time.perf_counter()
                fa(r)
                t1 = time.perf_counter()
                fb(r)
                t2 = time.perf_counter()
                if r >= self.warmup:
                    tog.append(1e3 * (t2 - t0))
                    sa.append(1e3 * (t1 - t0))
                    sb.append(1e3 * (t2 - t1))
            return PairStats(summarize(tog), summarize(sa), summarize(sb), concurrent=False)
        for i in range(self.warmup):
            self._launch_pair(fa, fb, i, streams)
        cuda.synchronize(self.device)
        t0 = time.perf_counter()
        self._launch_pair(fa, fb, self.warmup, streams)
        host_s = time.perf_counter() - t0
        cuda.synchronize(self.device)
        self._sleep(host_s * self.repeats)
        marks = [self._launch_pair(fa, fb, self.warmup + 1 + r, streams) for r in range(self.repeats)]
        cuda.synchronize(self.device)
        tog = [fork.elapsed_time(join) for fork, _, _, _, _, join in marks]
        sa = [a0.elapsed_time(a1) for _, a0, a1, _, _, _ in marks]
        sb = [b0.elapsed_time(b1) for _, _, _, b0, b1, _ in marks]
        return PairStats(summarize(tog), summarize(sa), summarize(sb), concurrent=True)

    def _launch_pair(self, fa, fb, i: int, streams=None):
        main = cuda.current_stream(self.device)
        if self._streams is None:
            self._streams = (cuda.Stream(self.device), cuda.Stream(self.device))
        sa, sb = streams or self._streams
        fork, a0, a1, b0, b1, join = (self._event() for _ in range(6))
        fork.record(main)
        for s, (e0, e1, fn) in ((sa, (a0, a1, fa)), (sb, (b0, b1, fb))):
            s.wait_event(fork)
            with cuda.stream(s):
                e0.record(s)
                fn(i)
                e1.record(s)
            main.wait_event(e1)
        join.record(main)
        return fork, a0, a1, b0, b1, join

    # ---- helpers ------------------------------------------------------------------------------------
    def _event(self):
        return cuda.Event(enable_timing=True)

    def _sleep(self, host_s: float) -> None:
        """Hold the GPU long enough for the host to enqueue what follows; the margin covers host hiccups
        such as the NVML thread taking the GIL (Python hands it over every 5 ms)."""
        if self._has_sleep:
            seconds = min(MAX_SLEEP_S, 2 * host_s + 1e-3)
            cuda._sleep(int(seconds * GPU_CLOCK_HZ))
