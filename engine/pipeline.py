"""The one plan executor: runs a PipelinePlan's op instances, layer by layer, on CUDA streams with events.

Dependencies come from the plan (row overlap over the layer's dataflow); only those that cross streams
need an event, since a stream runs its own work in order. On CPU there are no streams: instances run in
issue order, which the plan guarantees is topological.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from engine.models.forward import ForwardBatch
from engine.models.llama import LlamaModel
from engine.partition import cublas_sm_budget, green_context
from engine.plan import COLLECTIVE_OPS, GEMM_OPS, PipelinePlan


@dataclass
class OpTiming:
    layer: int
    index: int  # instance index in the plan
    op: str
    stream: int
    start_ms: float  # from the start of the forward
    end_ms: float


class PlanExecutor:
    def __init__(self, plan: PipelinePlan, model: LlamaModel, device: torch.device):
        self.plan = plan
        self.model = model
        self.is_cuda = device.type == "cuda"
        n = len(plan.ops)
        # cross-stream waits, computed once: same-layer producers and (for attn_norm) the previous layer's
        self.waits = [[j for j in plan.producers(k) if plan.ops[j].stream != plan.ops[k].stream]
                      for k in range(n)]
        self.prev_waits = [[j for j in plan.first_layer_deps(k) if plan.ops[j].stream != plan.ops[k].stream]
                           if plan.ops[k].op == "attn_norm" else [] for k in range(n)]
        needed = {j for w in self.waits + self.prev_waits for j in w}
        self.streams = None
        self.events = {}
        self.green = []  # green contexts behind the streams (kept alive while their streams are used)
        self.calls = [self._call(inst, device) for inst in plan.ops]  # fn(layer, a, b, fb) per instance
        if self.is_cuda and (plan.num_streams > 1 or plan.partition == "green"):
            prios = plan.stream_priorities or (0,) * plan.num_streams
            sms = plan.stream_sms or (None,) * plan.num_streams
            self.streams = []
            for p, n in zip(prios, sms, strict=True):
                if plan.partition == "green" and n is not None:  # a green stream takes no priority
                    self.green.append(green_context(n, device))
                    self.streams.append(self.green[-1].Stream())
                else:
                    self.streams.append(torch.cuda.Stream(device=device, priority=p))
            self.events = {j: torch.cuda.Event() for j in needed}

    def _call(self, inst, device):
        fn, budget = self.model.ops.get(inst.op), inst.sm_budget
        if fn is None and inst.op in COLLECTIVE_OPS:  # a single-GPU model: there is nothing to reduce
            return lambda layer, a, b, fb: None
        if self.plan.partition == "cublas" and self.is_cuda and inst.op in GEMM_OPS and budget is not None:
            num_sms = torch.cuda.get_device_properties(device).multi_processor_count

            def confined(layer, a, b, fb):
                with cublas_sm_budget(budget, num_sms):
                    fn(layer, a, b, fb, budget)

            return confined
        return lambda layer, a, b, fb: fn(layer, a, b, fb, budget)

    def _rows(self, fb: ForwardBatch):
        return [self.plan.rows(inst, fb.num_tokens) for inst in self.plan.ops]

    def forward(self, fb: ForwardBatch, timings: list[OpTiming] | None = None) -> None:
        """Run every layer of the plan over the batch; leaves the last layer's output in the workspace."""
        rows = self._rows(fb)
        calls = self.calls
        ops = self.plan.ops
        if self.streams is None and timings is None:  # the fast path: one stream, issue order
            for layer in range(self.model.cfg.num_layers):
                for call, (a, b) in zip(calls, rows, strict=True):
                    if a < b:
                        call(layer, a, b, fb)
            return
        main = torch.cuda.current_stream() if self.is_cuda else None
        streams = self.streams or [main] * self.plan.num_streams
        if self.streams:
            fork = torch.cuda.Event()
            fork.record(main)
            for s in self.streams:
                s.wait_event(fork)
        marks = []  # (layer, k, start_event, end_event) when timing
        origin = None
        if timings is not None and not self.is_cuda:  # CPU ops are synchronous: a host clock times them
            t0 = time.perf_counter()
            for layer in range(self.model.cfg.num_layers):
                for k, (inst, (a, b)) in enumerate(zip(ops, rows, strict=True)):
                    if a < b:
                        s = time.perf_counter()
                        calls[k](layer, a, b, fb)
                        e = time.perf_counter()
                        timings.append(OpTiming(layer, k, inst.op, inst.stream, 1e3 * (s - t0), 1e3 * (e - t0)))
            return
        if timings is not None:
            origin = torch.cuda.Event(enable_timing=True)
            origin.record(main)
        recorded: set[int] = set()  # events recorded in this forward; a skipped producer left no data to wait for
        idle = {k for k, (inst, (a, b)) in enumerate(zip(ops, rows, strict=True)) if not has_work(inst.op, a, b, fb)}
        for layer in range(self.model.cfg.num_layers):
            for k, (inst, (a, b)) in enumerate(zip(ops, rows, strict=True)):
                if k in idle:
                    continue
                s = streams[inst.stream]
                with torch.cuda.stream(s) if self.is_cuda else _null():
                    for j in self.waits[k] + (self.prev_waits[k] if layer else []):
                        if j in recorded:  # (waiting on an event recorded outside a graph capture is illegal)
                            s.wait_event(self.events[j])
                    if origin is not None:
                        e0 = torch.cuda.Event(enable_timing=True)
                        e0.record(s)
                    calls[k](layer, a, b, fb)
                    if k in self.events:
                        self.events[k].record(s)
                        recorded.add(k)
                    if origin is not None:
                        e1 = torch.cuda.Event(enable_timing=True)
                        e1.record(s)
                        marks.append((layer, k, e0, e1))
        if self.streams:
            for s in self.streams:
                join = torch.cuda.Event()
                join.record(s)
                main.wait_event(join)
        if timings is not None and origin is not None:
            torch.cuda.synchronize()
            for layer, k, e0, e1 in marks:
                inst = ops[k]
                timings.append(OpTiming(layer, k, inst.op, inst.stream, origin.elapsed_time(e0),
                                        origin.elapsed_time(e1)))


def has_work(op: str, a: int, b: int, fb: ForwardBatch) -> bool:
    """Whether an instance over rows [a, b) launches anything. Attention over rows holding none of its kind
    (decode attention over prefill rows, prefill attention over decode rows) is skipped: it records no event,
    so its consumers do not wait behind whatever its stream runs before it."""
    if a >= b:
        return False
    if op == "decode_attn":
        return a < fb.num_decode
    if op == "prefill_attn":
        meta = fb.prefill.get((a, b))
        return meta is not None and meta.row_lo < meta.row_hi
    return True


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
