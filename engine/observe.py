"""Step records and observers: how tools watch the engine without patching it.

Every `LLMEngine.step()` builds one `StepRecord` and hands it to each registered observer (a callable),
but only when at least one is registered: with none, a step creates no record and records no CUDA event.
An observer registered with `gpu_time=True` makes the runner bracket each launched iteration (forward,
logits, sampling) with two CUDA events (on CPU: the host clock, since CPU ops run as they are called);
the record then carries a `GpuSpan` whose `ms()` reads that iteration's GPU time. With async scheduling a
record is emitted before its iteration has finished on the GPU, so `ms()` waits for that iteration's end
event: read it after the run (or accept the wait).

Host phases are wall-clock seconds of the engine's own Python in that step:
- schedule_s: `scheduler.schedule()` + `scheduler.advance()` (forming the batch, block bookkeeping);
- launch_s: `runner.launch()` (build inputs, enqueue the forward or replay a graph, enqueue sampling);
- resolve_s: handing sampled tokens to the scheduler (token append, finish checks), its wait excluded;
- wait_s: blocked on the GPU for sampled tokens (async: the previous iteration's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

MAX_OP_SAMPLES = 128


@dataclass
class GpuSpan:
    """Start and end marks of one launched iteration: CUDA events, or perf_counter seconds on CPU."""

    start: object
    end: object

    def ms(self) -> float:
        if hasattr(self.start, "elapsed_time"):
            self.end.synchronize()  # this iteration only
            return self.start.elapsed_time(self.end)
        return 1e3 * (self.end - self.start)


@dataclass
class StepRecord:
    """One engine step. A step that only read back the previous iteration's tokens launched nothing:
    `launched` is False and its composition is zero."""

    step: int  # index of the launched iteration (engine.num_steps before it ran); -1 if none launched
    num_tokens: int
    num_decode: int  # decode sequences (one token each)
    num_prefill_tokens: int
    num_seqs: int
    schedule_s: float
    launch_s: float
    resolve_s: float
    wait_s: float
    host_s: float  # the step's Python time: its wall time less wait_s
    is_async: bool  # launched before the previous iteration's tokens were read (outputs trail by one step)
    replayed: bool = False  # the iteration replayed a captured CUDA graph (else launched op by op)
    gpu: GpuSpan | None = None  # only when an observer asked for GPU times
    op_timings: list | None = None  # per-op OpTiming (CUDA events, eager, synchronous) when the step was timed
    batch: object = None  # the ScheduledBatch (read-only for observers)
    num_outputs: int = 0  # RequestOutputs the step returned

    @property
    def launched(self) -> bool:
        return self.step >= 0

    def gpu_ms(self) -> float | None:
        """GPU time of the iteration (waits for it to finish); None when not measured."""
        return self.gpu.ms() if self.gpu is not None else None


Observer = Callable[[StepRecord], None]


@dataclass
class Observers:
    """The registry an engine keeps. `wants_gpu_time` tells the runner whether to record events."""

    entries: list[tuple[Observer, bool]] = field(default_factory=list)

    def add(self, fn: Observer, gpu_time: bool = False) -> None:
        if not callable(fn):
            raise TypeError(f"an observer must be callable, got {type(fn).__name__}")
        self.entries.append((fn, gpu_time))

    def remove(self, fn: Observer) -> None:
        """Unregister fn (ValueError if it was never registered)."""
        for k, (f, _) in enumerate(self.entries):
            if f == fn:  # bound methods compare equal, never identical
                del self.entries[k]
                return
        raise ValueError("observer is not registered")

    @property
    def active(self) -> bool:
        return bool(self.entries)

    @property
    def wants_gpu_time(self) -> bool:
        return any(g for _, g in self.entries)

    def emit(self, record: StepRecord) -> None:
        for fn, _ in list(self.entries):
            fn(record)


class OpProfile:
    """An observer: per-op GPU time summed over layers, accumulated over op-timed iterations."""

    def __init__(self):
        self.num_iterations = 0
        self.op_ms: dict[str, float] = {}
        self.iteration_ms = 0.0
        self.tokens = 0
        self.decode_seqs = 0
        self.samples: list[tuple[int, int, list]] = []  # (tokens, decode seqs, OpTimings): the first few,
        #                                                  for timelines of single iterations (Gantt)

    def __call__(self, record: StepRecord) -> None:
        if record.op_timings:
            self.add(record.num_tokens, record.num_decode, record.op_timings)

    def add(self, num_tokens: int, num_decode: int, timings: list) -> None:
        if len(self.samples) < MAX_OP_SAMPLES:
            self.samples.append((num_tokens, num_decode, list(timings)))
        self.num_iterations += 1
        self.tokens += num_tokens
        self.decode_seqs += num_decode
        self.iteration_ms += max(t.end_ms for t in timings) - min(t.start_ms for t in timings)
        for t in timings:
            self.op_ms[t.op] = self.op_ms.get(t.op, 0.0) + (t.end_ms - t.start_ms)

    def summary(self) -> dict:
        n = max(self.num_iterations, 1)
        per_op = {op: ms / n for op, ms in sorted(self.op_ms.items(), key=lambda kv: -kv[1])}
        return {"num_iterations": self.num_iterations, "mean_iteration_ms": self.iteration_ms / n,
                "mean_tokens": self.tokens / n, "mean_decode_seqs": self.decode_seqs / n,
                "mean_op_ms": per_op,
                "op_share": {op: ms / max(sum(per_op.values()), 1e-9) for op, ms in per_op.items()}}
