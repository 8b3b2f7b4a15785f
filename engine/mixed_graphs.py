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
graph reads the same two flat static buffers (int64, int32) at its own offsets, so a step costs one
host-to-device copy per dtype. Logits run eagerly after the replay: their row count varies.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import Counter

import numpy as np
import torch

from engine.batch_builder import fill_pending, upload
from engine.models.forward import ForwardBatch, PrefillMeta
from engine.scheduler import ScheduledBatch

TOKEN_STEP = 64
DECODE_STEP = 32
MAX_PIECES = 16
# Capture on first use: a capture's host time hides behind the GPU's work on a big step, and a bucket seen
# once often comes back (first use against second use: README, "Measured"; engine-min-uses.json).
MIN_USES = 1
MAX_GRAPHS = 256


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
        mb = runner.max_blocks_per_seq
        n_inst = len(runner.builder.prefill_ranges)
        dev = runner.device
        self.buf64 = torch.zeros(3 * max_tokens, dtype=torch.int64, device=dev)  # ids | positions | slots
        # decode block tables | context lens, then per prefill instance: cu_seqlens | seq lens | block tables;
        # a bucket's decode rows round up to DECODE_STEP, past max_decode when that is not a multiple of it
        rows = -(-max_decode // DECODE_STEP) * DECODE_STEP
        self.buf32 = torch.zeros(rows * (mb + 1) + n_inst * (MAX_PIECES * (mb + 2) + 1), dtype=torch.int32,
                                 device=dev)
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self.batches: dict[tuple[int, int], ForwardBatch] = {}
        self.uses: Counter = Counter()
        self.num_runs = 0  # steps run in a bucket's layout (replayed, or eager before a capture / on CPU)
        self.num_replays = 0
        self.replayed = False  # whether the last run() replayed a graph
        self.capture_error = None  # why a capture failed (then every later mixed step runs eagerly)
        self.pool = None

    def _forward_batch(self, key: tuple[int, int]) -> ForwardBatch:
        """The bucket's ForwardBatch: views of the static buffers, in the order run() packs them."""
        t, dd = key
        mb = self.runner.max_blocks_per_seq
        b64, b32 = self.buf64, self.buf32
        fb = ForwardBatch(num_tokens=t, num_decode=dd, input_ids=b64[:t], positions=b64[t : 2 * t],
                          slot_mapping=b64[2 * t : 3 * t], decode_block_tables=b32[: dd * mb].view(dd, mb),
                          decode_context_lens=b32[dd * mb : dd * (mb + 1)], logits_rows=b64[:0])
        off = dd * (mb + 1)
        plan = self.runner.plan
        for inst in self.runner.builder.prefill_ranges:
            a, b = plan.rows(inst, t)
            lo = max(a, dd)
            cu, lens = b32[off : off + MAX_PIECES + 1], b32[off + MAX_PIECES + 1 : off + 2 * MAX_PIECES + 1]
            off += 2 * MAX_PIECES + 1
            bt = b32[off : off + MAX_PIECES * mb].view(MAX_PIECES, mb)
            off += MAX_PIECES * mb
            fb.prefill[(a, b)] = PrefillMeta(lo, max(lo, b), cu, lens, bt, max(b - lo, 0))
        return fb

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
        due = key in self.graphs or (self.uses[key] >= self.min_uses and len(self.graphs) < MAX_GRAPHS)
        if self.use_graphs and not due:
            return None
        t, dd = key
        builder = self.runner.builder
        metas = builder.prefill_meta(batch, t, decode_rows=dd, max_pieces=MAX_PIECES)
        if metas is None:
            return None
        h = builder.host_arrays(batch, pad_to=t, pending=prev.sample_index if prev else None, decode_rows=dd)
        nl, nf = len(h["logits_rows"]), len(h["fix_rows"])
        i64 = np.concatenate([h["ids"], h["pos"], h["slots"], h["logits_rows"], h["fix_rows"], h["fix_src"]])
        i32 = np.concatenate([h["dec_bt"].ravel(), h["dec_ctx"]]
                             + [x for _, m in metas for x in (m["cu"], m["lens"], m["bt"].ravel())])
        (d64,), (d32,) = upload([i64], self.runner.device), upload([i32], self.runner.device)
        self.buf64[: 3 * t].copy_(d64[: 3 * t])
        self.buf32[: d32.numel()].copy_(d32)
        fill_pending(self.buf64[:t], d64[3 * t + nl : 3 * t + nl + nf], d64[3 * t + nl + nf :], prev)
        if key not in self.batches:
            self.batches[key] = self._forward_batch(key)
        fb = self.batches[key]
        self.num_runs += 1
        self.replayed = key in self.graphs
        if self.replayed:
            self.graphs[key].replay()
            self.num_replays += 1
        elif self.use_graphs:  # this step eagerly in the bucket's layout, then capture
            self._run_and_capture(key, fb)
        else:  # CPU (tests): the bucket's layout, eagerly
            self.runner.executor.forward(fb)
        fb = dataclasses.replace(fb, logits_rows=d64[3 * t : 3 * t + nl])
        return self.runner.model.logits(fb)
