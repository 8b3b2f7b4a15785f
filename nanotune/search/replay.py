"""Replay the engine's own scheduler (plain Python, no GPU) over a finite offline trace: the exact batch
composition of every iteration, given the KV capacity. A finite offline run ramps up, settles and drains,
and constant-length requests move in waves; the steady state (nanotune.search.capacity) sees none of it,
so a prediction held against a measured run of a modest trace uses this instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.block_manager import BlockManager
from engine.request import Request, SamplingParams
from engine.scheduler import Scheduler, SchedulerConfig
from engine.sizing import DECODE_ROW_ALIGN
from nanotune.search.perfmodel import BatchShape


@dataclass(frozen=True)
class Replay:
    batches: list[BatchShape]  # one per iteration, in order
    total_tokens: int  # prompt + output tokens of the trace (vLLM's total_token_throughput numerator)
    num_preemptions: int

    def buckets(self, decode_step: int = 16, prefill_step: int = 128, context_step: int = 128
                ) -> list[tuple[BatchShape, int]]:
        """Iterations grouped by rounded composition -> (representative batch, count): a few dozen shapes
        stand for thousands of iterations, so each is simulated once."""
        groups: dict[tuple, list[BatchShape]] = {}
        for b in self.batches:
            key = (round(b.num_decode / decode_step), round(b.num_prefill / prefill_step),
                   round(b.decode_context / context_step), round(b.prefill_context / context_step))
            groups.setdefault(key, []).append(b)
        out = []
        for members in groups.values():
            cols = zip(*((b.num_decode, b.decode_context, b.num_prefill, b.prefill_context, b.sampled)
                         for b in members), strict=True)
            out.append((BatchShape(*(sum(c) / len(members) for c in cols)), len(members)))
        return out


def composition(batch) -> BatchShape:
    """A ScheduledBatch as the model's BatchShape (mean decode context; mean attended keys of prefill rows)."""
    dec = batch.seqs[: batch.num_decode]
    pre = batch.seqs[batch.num_decode:]
    d = len(dec)
    ctx = sum(s.start + 1 for s in dec) / d if d else 0.0
    p = sum(s.num_tokens for s in pre)
    # rows start+1 .. start+n attend that many keys each: mean (2 start + n + 1) / 2 over the chunk
    att = sum(s.num_tokens * (2 * s.start + s.num_tokens + 1) / 2 for s in pre) / p if p else 0.0
    return BatchShape(float(d), ctx, float(p), att, float(sum(1 for s in batch.seqs if s.samples)))


def replay(lengths: list[tuple[int, int]], max_num_batched_tokens: int, max_num_seqs: int, num_blocks: int,
           block_size: int = 16, max_model_len: int = 8192, max_iterations: int = 1_000_000,
           decode_row_align: int = DECODE_ROW_ALIGN) -> Replay:
    """Run the scheduler over (prompt_len, output_len) requests arriving at once, as `bench` offline does
    (on a GPU, where mixed CUDA graphs pad decode rows to decode_row_align)."""
    blocks = BlockManager(num_blocks, block_size)
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs,
                                      max_model_len=max_model_len, decode_row_align=decode_row_align), blocks)
    total = 0
    for p, o in lengths:
        sched.add(Request([0] * int(p), SamplingParams(max_tokens=int(o), ignore_eos=True)))
        total += int(p) + int(o)
    out = []
    for _ in range(max_iterations):
        if not sched.has_unfinished():
            break
        batch = sched.schedule()
        if not batch.seqs:
            raise RuntimeError("replay: the scheduler made no progress")
        out.append(composition(batch))
        sched.postprocess(batch, [0 if s.samples else None for s in batch.seqs])
    return Replay(out, total, sched.num_preemptions)

