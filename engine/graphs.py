"""CUDA graphs for decode-only iterations, one per batch-size bucket, sharing one memory pool.

A decode step of a small batch is hundreds of short kernels; replaying a captured graph removes their
launch cost. Inputs live in static buffers the graph reads; a batch is padded up to its bucket (padding
rows store no KV and are never sampled). The whole multi-stream plan is captured, streams and events too.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.batch_builder import fill_pending
from engine.models.forward import ForwardBatch
from engine.scheduler import ScheduledBatch


def buckets(max_batch: int) -> list[int]:
    sizes = [1, 2, 4, 8] + list(range(16, 257, 16)) + list(range(288, 1025, 32))
    return [b for b in sizes if b < max_batch] + [max_batch]


class DecodeGraphs:
    def __init__(self, runner, max_batch: int):
        self.runner = runner
        self.sizes = buckets(max_batch)
        self.max_batch = max_batch
        dev, mb = runner.device, runner.max_blocks_per_seq
        self.ids = torch.zeros(max_batch, dtype=torch.int64, device=dev)
        self.pos = torch.zeros(max_batch, dtype=torch.int64, device=dev)
        self.slots = torch.full((max_batch,), -1, dtype=torch.int64, device=dev)
        self.bt = torch.zeros(max_batch, mb, dtype=torch.int32, device=dev)
        self.ctx = torch.ones(max_batch, dtype=torch.int32, device=dev)
        self.rows = torch.arange(max_batch, dtype=torch.int64, device=dev)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = torch.cuda.graph_pool_handle()
        for b in reversed(self.sizes):  # largest first: smaller graphs fit in the memory it pooled
            self._capture(b)

    def _fb(self, b: int) -> ForwardBatch:
        return ForwardBatch(num_tokens=b, num_decode=b, input_ids=self.ids[:b], positions=self.pos[:b],
                            slot_mapping=self.slots[:b], decode_block_tables=self.bt[:b],
                            decode_context_lens=self.ctx[:b], logits_rows=self.rows[:b])

    def _capture(self, b: int) -> None:
        r = self.runner
        fb = self._fb(b)
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
        n = len(batch)
        b = next(s for s in self.sizes if s >= n)
        h = self.runner.builder.host_arrays(batch, pad_to=b, pending=prev.sample_index if prev else None)
        nf = len(h["fix_rows"])
        packed = torch.from_numpy(np.concatenate([h["ids"], h["pos"], h["slots"], h["fix_rows"], h["fix_src"]]))
        dev = packed.pin_memory().to(self.runner.device, non_blocking=True)
        self.ids[:b].copy_(dev[:b])
        self.pos[:b].copy_(dev[b : 2 * b])
        self.slots[:b].copy_(dev[2 * b : 3 * b])
        fill_pending(self.ids, dev[3 * b : 3 * b + nf], dev[3 * b + nf :], prev)
        packed32 = torch.from_numpy(np.concatenate([h["dec_bt"].ravel(), h["dec_ctx"]])).pin_memory()
        dev32 = packed32.to(self.runner.device, non_blocking=True)
        self.bt[:b].copy_(dev32[: b * self.bt.shape[1]].view(b, -1))
        self.ctx[:b].copy_(dev32[b * self.bt.shape[1] :])
        g, out = self.graphs[b]
        g.replay()
        return out[:n]
