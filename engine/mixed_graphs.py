"""CUDA graphs for iterations that mix prefill and decode, one per (tokens, decode rows) bucket, captured
on a bucket's first use.

Why: an eager mixed iteration launches every kernel of every layer from Python, and for a few hundred tokens
that host time is as long as the GPU's own work, so ShareGPT-like steps ran at the host's pace
(scripts/step_anatomy.py measures it; results/reference/h200/step-anatomy-sharegpt.json).

Layout of bucket (T, D) for a batch of d decode and p prefill tokens: rows [0, d) decode, [d, D) decode
padding (context 1, no KV store), [D, D + p) prefill, [D + p, T) padding (in no prefill piece, no KV store,
never sampled). T = d + p rounded up to TOKEN_STEP (at most the workspace's rows); D = d rounded up to
DECODE_STEP but at most T - p, so decode padding never adds rows beyond the token rounding. Each prefill
attention instance gets MAX_PIECES pieces (empty ones pad); a batch with more runs eagerly. Every bucket's
graph reads the runner's static input buffers in its layout (engine/batch_builder.py). Logits run eagerly
after the replay: their row count varies. The scheduler leaves D - d out of the prefill budget
(SchedulerConfig.decode_row_align), so a full batch keeps T = the budget and one D: one bucket.
"""

from __future__ import annotations

import warnings
from collections import Counter

import torch

from engine.batch_builder import Layout
from engine.models.forward import ForwardBatch
from engine.scheduler import ScheduledBatch
from engine.sizing import DECODE_ROW_ALIGN

TOKEN_STEP = 64
DECODE_STEP = DECODE_ROW_ALIGN
MAX_PIECES = 16
# Capture on first use: a capture's host time hides behind the GPU's work on a big step, and a bucket seen
# once often comes back (first use against second use: README, "Measured"; engine-min-uses.json).
MIN_USES = 1
MAX_GRAPHS = 256
# With MAX_GRAPHS captured, a new bucket replaces the least recently used graph if that one has not run for
# this many mixed steps (a workload that changed, e.g. a rate sweep moving from light to full batches, gets
# graphs for its new shapes); a graph used more recently is kept and the new bucket runs eagerly (no churn).
EVICT_AFTER = 2000


def bucket(num_decode: int, num_tokens: int, max_tokens: int) -> tuple[int, int]:
    """(T, D) for a mixed batch of num_decode decode rows among num_tokens rows; see the module docstring."""
    p = num_tokens - num_decode
    t = min(-(-num_tokens // TOKEN_STEP) * TOKEN_STEP, max(max_tokens, num_tokens))
    return t, min(-(-num_decode // DECODE_STEP) * DECODE_STEP, t - p)


class MixedGraphs:
    def __init__(self, runner, max_tokens: int, max_decode: int, min_uses: int | None = None):
        self.runner = runner
        self.min_uses = MIN_USES if min_uses is None else min_uses
        self.use_graphs = runner.device.type == "cuda"  # on CPU the bucket layout runs eagerly (tests)
        self.max_tokens = max_tokens
        self.max_decode = max_decode
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}  # least recently used first
        self.last_used: dict[tuple[int, int], int] = {}  # bucket -> mixed step (num_mixed) it last ran
        self.num_mixed = 0
        self.num_evicted = 0
        self.uses: Counter = Counter()
        self.num_runs = 0  # steps run in a bucket's layout (replayed, or eager before a capture / on CPU)
        self.num_replays = 0
        self.replayed = False  # whether the last run() replayed a graph
        self.capture_error = None  # why a capture failed (then every later mixed step runs eagerly)
        self.pool = None

    def _room(self) -> bool:
        """Whether a new graph may be captured: under MAX_GRAPHS, or the least recently used one is stale
        (then it is dropped; its memory goes back to the shared pool)."""
        if len(self.graphs) < MAX_GRAPHS:
            return True
        oldest = next(iter(self.graphs))
        if self.num_mixed - self.last_used.get(oldest, 0) < EVICT_AFTER:
            return False
        del self.graphs[oldest]
        self.num_evicted += 1
        return True

    def _run_and_capture(self, key: tuple[int, int], fb: ForwardBatch) -> None:
        """Run the step eagerly in the bucket's layout, then capture the same forward, both on the capture
        stream: the eager run compiles and picks every kernel, and whatever a library sets up lazily per
        stream happens outside the capture. No torch.cuda.graph: its device sync, gc and cache flush would
        stall the async pipeline, and capturing executes nothing while the iteration before may still run.
        A capture that fails leaves the step's eager result standing and turns mixed graphs off for this
        engine: seen on an H200 for nb2-cublas-sm44 when another engine in the same process had captured
        a two-stream plan before (cudaErrorStreamCaptureInvalidated; cause not found)."""
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
            self.stream = torch.cuda.Stream(device=self.runner.device)
        main = torch.cuda.current_stream(self.runner.device)
        self.stream.wait_stream(main)  # the inputs were uploaded on the main stream
        g = torch.cuda.CUDAGraph()
        with torch.cuda.stream(self.stream):
            self.runner.executor.forward(fb)
            try:
                g.capture_begin(pool=self.pool)
                try:
                    self.runner.executor.forward(fb)
                finally:
                    g.capture_end()
            except RuntimeError as e:  # the step's eager run stands; later mixed steps run eagerly
                self.capture_error = f"{type(e).__name__}: {e}"[:300]
                warnings.warn(f"mixed CUDA graph capture failed, mixed steps run eagerly: {self.capture_error}",
                              stacklevel=2)
                g = None
        main.wait_stream(self.stream)  # the logits read what the eager run wrote
        if g is not None:
            self.graphs[key] = g

    def run(self, batch: ScheduledBatch, prev=None) -> torch.Tensor | None:
        """Replay (capturing first if due) and return the logits; None: run this batch eagerly."""
        if (batch.is_decode_only or batch.num_tokens > self.max_tokens or batch.num_decode > self.max_decode
                or self.capture_error):
            return None
        key = bucket(batch.num_decode, batch.num_tokens, self.max_tokens)
        self.uses[key] += 1
        self.num_mixed += 1
        due = key in self.graphs or (self.uses[key] >= self.min_uses and self._room())
        if self.use_graphs and not due:
            return None
        t, dd = key
        fb = self.runner.builder.stage(batch, prev, Layout(t, dd, self.runner.max_blocks_per_seq, MAX_PIECES))
        if fb is None:  # more prefill pieces than the layout holds
            return None
        self.num_runs += 1
        self.replayed = key in self.graphs
        self.last_used[key] = self.num_mixed
        if self.replayed:
            self.graphs[key] = self.graphs.pop(key)  # now the most recently used
            self.graphs[key].replay()
            self.num_replays += 1
        elif self.use_graphs:  # this step eagerly in the bucket's layout, then capture
            self._run_and_capture(key, fb)
        else:  # CPU (tests): the bucket's layout, eagerly
            self.runner.executor.forward(fb)
        return self.runner.model.logits(fb)  # its rows vary per step: eager, after the replay
