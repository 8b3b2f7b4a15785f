"""CUDA graphs for decode-only iterations, one per batch-size bucket, sharing one memory pool.

A decode step of a small batch is hundreds of short kernels; replaying a captured graph removes their
launch cost. A graph reads its inputs from the runner's static input buffers, in the bucket's layout
(engine/batch_builder.py); a batch is padded up to its bucket (padding rows store no KV and their logits are
sliced off). The whole multi-stream plan is captured, streams and events too.
"""

from __future__ import annotations

import torch

from engine.batch_builder import Layout
from engine.scheduler import ScheduledBatch


def buckets(max_batch: int) -> list[int]:
    sizes = [1, 2, 4, 8] + list(range(16, 257, 16)) + list(range(288, 1025, 32))
    return [b for b in sizes if b < max_batch] + [max_batch]


class DecodeGraphs:
    def __init__(self, runner, max_batch: int):
        self.runner = runner
        self.sizes = buckets(max_batch)
        self.max_batch = max_batch
        self.use_graphs = runner.device.type == "cuda"  # on CPU the bucket layout runs eagerly (tests)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        if self.use_graphs:
            self.pool = torch.cuda.graph_pool_handle()
            for b in reversed(self.sizes):  # largest first: smaller graphs fit in the memory it pooled
                self._capture(b)

    def layout(self, b: int) -> Layout:
        return Layout(b, b, self.runner.max_blocks_per_seq, 0, all_rows_sample=True)

    def _capture(self, b: int) -> None:
        r = self.runner
        empty = ScheduledBatch([], 0)
        fb = r.builder.stage(empty, None, self.layout(b))  # every row padding: no KV store, context 1
        side = torch.cuda.Stream(device=r.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: Triton compiles and cuBLAS picks kernels outside capture
            r.executor.forward(fb)
            r.model.logits(fb)
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=self.pool):
            r.executor.forward(fb)
            out = r.model.logits(fb)
        self.graphs[b] = (g, out)

    def can_run(self, batch: ScheduledBatch) -> bool:
        return batch.is_decode_only and 0 < len(batch) <= self.max_batch

    def run(self, batch: ScheduledBatch, prev=None) -> torch.Tensor:
        """Stage the batch in its bucket's layout and replay; -> logits fp32 [len(batch), V]."""
        n = len(batch)
        b = next(s for s in self.sizes if s >= n)
        fb = self.runner.builder.stage(batch, prev, self.layout(b))
        if not self.use_graphs:
            self.runner.executor.forward(fb)
            return self.runner.model.logits(fb)[:n]
        g, out = self.graphs[b]
        g.replay()
        return out[:n]
