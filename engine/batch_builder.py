"""ScheduledBatch (host) -> ForwardBatch (device views): the runner's one input-staging path.

Every step, eager or a CUDA-graph replay, writes its inputs into the same two static device buffers (int64,
int32) with one host-to-device copy per dtype, from one of two pinned host buffers (two: the next step is
staged while the copy of the one before may not have run yet). A `Layout` fixes where each input sits, so a
graph captured over a layout and every later step staged in it read the same addresses.

Block tables come from a persistent host table, one row per running request, extended in place as the
request's block list grows (its list object is replaced only when the request is re-admitted after a
preemption, and then the row is rewritten); a step gathers its rows with numpy. The Python per sequence is
a few scalar reads; the per-token arithmetic is numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.models.forward import ForwardBatch, PrefillMeta
from engine.plan import PipelinePlan
from engine.request import PENDING_TOKEN
from engine.scheduler import ScheduledBatch
from engine.sizing import DECODE_ROW_ALIGN

# Every section of the static buffers starts at a multiple of ALIGN elements (16 bytes of int32, 32 of int64).
# Triton compiles a kernel variant per argument pointer's 16-byte alignment, so a section whose start moved
# with the batch's shape (an eager step's block-table width, a bucket's decode rows) compiled a new variant in
# the middle of a run, a 1-2 s stall each (scripts/model_gap.py lists the compiles per step).
ALIGN = 4


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


@dataclass(frozen=True)
class Layout:
    """Where a step's inputs sit in the static buffers.

    rows [0, decode_rows) are decode rows (the batch's first, then padding: context 1, no KV store) and
    prefill rows start at decode_rows; rows past the last prefill token up to `rows` are padding. pieces > 0:
    a CUDA-graph layout (static shapes): each prefill_attn instance spans its whole row range with exactly
    `pieces` pieces (empty ones pad); 0: the batch's own pieces (eager)."""

    rows: int
    decode_rows: int
    width: int  # block-table columns
    pieces: int = 0
    all_rows_sample: bool = False  # decode-only graphs: logits over every row (padding sliced off after)


def fill_pending(input_ids: torch.Tensor, rows: torch.Tensor, src: torch.Tensor, prev) -> None:
    """input_ids[rows] = previous iteration's sampled tokens[src], on the device (no host round trip)."""
    if rows.numel():
        input_ids[rows] = prev.tokens_dev[src]


class BatchBuilder:
    def __init__(self, plan: PipelinePlan, block_size: int, max_blocks_per_seq: int, max_rows: int,
                 max_seqs: int, device: torch.device, graph_pieces: int = 0):
        self.plan = plan
        self.bs = block_size
        self.max_blocks = max_blocks_per_seq
        self.device = device
        self.prefill_ranges = [i for i in plan.ops if i.op == "prefill_attn"]
        mb = max_blocks_per_seq
        self.max_decode_rows = -(-max_seqs // DECODE_ROW_ALIGN) * DECODE_ROW_ALIGN
        # ids | positions | slots (rows each), then logits rows, fix rows, fix sources (<= rows each)
        n64 = 6 * max(max_rows, self.max_decode_rows) + 3 * ALIGN
        # decode block tables | context lens, then per prefill instance: cu_seqlens | seq lens | block tables
        # (a piece per prefill sequence: at most max_seqs of them, or a graph layout's graph_pieces)
        pieces = max(max_seqs, graph_pieces)
        n32 = (self.max_decode_rows * (mb + 1) + len(self.prefill_ranges) * (pieces * (mb + 2) + 1)
               + (2 + 3 * len(self.prefill_ranges)) * ALIGN)
        pin = device.type == "cuda"
        self.dev64 = torch.zeros(n64, dtype=torch.int64, device=device)
        self.dev32 = torch.zeros(n32, dtype=torch.int32, device=device)
        self.host64 = [torch.zeros(n64, dtype=torch.int64, pin_memory=pin) for _ in range(2)]
        self.host32 = [torch.zeros(n32, dtype=torch.int32, pin_memory=pin) for _ in range(2)]
        self.copied = [None, None]  # per host buffer: the event after its last copy (CUDA)
        self.turn = 0
        # persistent block table: request id -> [row, the block list object written, entries written, request]
        self.table = np.zeros((max_seqs + 1, mb), np.int32)
        self.entries: dict[str, list] = {}
        self.free_rows = list(range(max_seqs, -1, -1))
        self.arange = np.arange(max(max_rows, self.max_decode_rows, mb * block_size), dtype=np.int64)

    # ---- layouts ------------------------------------------------------------------------------------
    def eager_layout(self, batch: ScheduledBatch) -> Layout:
        """The batch's own shape; block tables trimmed to the longest decode sequence (split-KV attention
        sizes its grid from the width)."""
        nd = batch.num_decode
        width = max((len(s.request.block_ids) for s in batch.seqs[:nd]), default=1)
        return Layout(batch.num_tokens, nd, width, 0, batch.is_decode_only)

    # ---- the persistent block table -----------------------------------------------------------------
    def _row(self, req) -> int:
        blocks = req.block_ids
        e = self.entries.get(req.request_id)
        if e is None or e[1] is not blocks:  # new here, or re-admitted with new blocks
            row = e[0] if e is not None else self._take_row()
            self.table[row, : len(blocks)] = blocks
            self.entries[req.request_id] = [row, blocks, len(blocks), req]
            return row
        n = len(blocks)
        if n != e[2]:
            self.table[e[0], e[2] : n] = blocks[e[2] :]
            e[2] = n
        return e[0]

    def _take_row(self) -> int:
        if not self.free_rows:  # rows of requests that no longer hold their blocks go back to the pool
            for rid in [k for k, e in self.entries.items() if e[3].block_ids is not e[1]]:
                self.free_rows.append(self.entries.pop(rid)[0])
        return self.free_rows.pop()

    # ---- staging ------------------------------------------------------------------------------------
    def stage(self, batch: ScheduledBatch, prev, lay: Layout) -> ForwardBatch | None:
        """Write the batch's inputs in layout `lay`, upload them, and return the ForwardBatch of views.
        prev: the previous iteration's StepHandle when some decode input tokens are still on the GPU.
        None: the batch does not fit a graph layout (more prefill pieces than it has)."""
        metas = self._pieces(batch, lay)
        if metas is None:
            return None
        self.turn ^= 1
        k = self.turn
        if self.copied[k] is not None:
            self.copied[k].synchronize()  # the copy that last read this host buffer (two steps ago) is done
        h64, h32 = self.host64[k].numpy(), self.host32[k].numpy()
        T, D, W, bs = lay.rows, lay.decode_rows, lay.width, self.bs
        T8 = _aligned(T)  # every section starts 16-byte aligned (see ALIGN)
        ids, pos, slots = h64[:T], h64[T8 : T8 + T], h64[2 * T8 : 2 * T8 + T]
        ids[:] = 0
        pos[:] = 0
        slots[:] = -1
        c0 = _aligned(D * W)  # decode context lens
        bt = h32[: D * W].reshape(D, W)
        ctx = h32[c0 : c0 + D]
        nd = batch.num_decode
        fix_rows = fix_src = ()
        if nd:
            reqs = [s.request for s in batch.seqs[:nd]]
            starts = np.fromiter((s.start for s in batch.seqs[:nd]), np.int64, nd)
            trows = np.fromiter((self._row(r) for r in reqs), np.int64, nd)
            bt[:nd] = self.table[trows, :W]
            ctx[:nd] = starts + 1
            pos[:nd] = starts
            slots[:nd] = bt[:nd][self.arange[:nd], starts // bs].astype(np.int64) * bs + starts % bs
            # a decode row's input is its newest token; PENDING_TOKEN: still on the GPU, gathered there
            ids[:nd] = [r.output_ids[-1] if r.output_ids else r.prompt_ids[-1] for r in reqs]
            fix_rows = np.flatnonzero(ids[:nd] == PENDING_TOKEN)
            if len(fix_rows):
                pending = prev.sample_index
                fix_src = [pending[reqs[i].request_id] for i in fix_rows]
                ids[fix_rows] = 0
        bt[nd:] = 0
        ctx[nd:] = 1  # padding rows attend to one (garbage) token, never NaN
        logits = [self.arange[:nd]] if not lay.all_rows_sample else [self.arange[:T]]
        row = D
        for s in batch.seqs[nd:]:
            req, n, start = s.request, s.num_tokens, s.start
            known = req.prompt_ids if start + n <= req.num_prompt_tokens else req.all_ids
            ids[row : row + n] = known[start : start + n]
            p = self.arange[start : start + n]
            pos[row : row + n] = p
            slots[row : row + n] = self.table[self._row(req), p // bs].astype(np.int64) * bs + p % bs
            row += n
            if s.samples:
                logits.append(np.array([row - 1], np.int64))
        logits = np.concatenate(logits)
        nl, nf = len(logits), len(fix_rows)
        tail = h64[3 * T8 : 3 * T8 + nl + 2 * nf]
        tail[:nl] = logits
        tail[nl : nl + nf] = fix_rows
        tail[nl + nf :] = fix_src
        off = _aligned(c0 + D)
        views = []
        for (a, b), lo, hi, pieces, max_q in metas:
            p = lay.pieces or len(pieces)
            l0 = _aligned(off + p + 1)
            b0 = _aligned(l0 + p)
            cu, lens = h32[off : off + p + 1], h32[l0 : l0 + p]
            pbt = h32[b0 : b0 + p * self.max_blocks].reshape(p, self.max_blocks)
            cu[0] = 0
            for j, (req, rows_in, ctx_end) in enumerate(pieces):
                cu[j + 1] = cu[j] + rows_in
                lens[j] = ctx_end
                pbt[j] = self.table[self._row(req)]
            cu[len(pieces) + 1 :] = cu[len(pieces)]
            lens[len(pieces) :] = 0
            pbt[len(pieces) :] = 0
            views.append(((a, b), lo, hi, (off, l0, b0), p, max_q))
            off = _aligned(b0 + p * self.max_blocks)
        n64 = 3 * T8 + nl + 2 * nf
        d64, d32 = self.dev64, self.dev32
        d64[:n64].copy_(self.host64[k][:n64], non_blocking=True)
        d32[:off].copy_(self.host32[k][:off], non_blocking=True)
        if self.device.type == "cuda":
            ev = self.copied[k] = self.copied[k] or torch.cuda.Event()
            ev.record()
        fb = ForwardBatch(num_tokens=T, num_decode=D, input_ids=d64[:T], positions=d64[T8 : T8 + T],
                          slot_mapping=d64[2 * T8 : 2 * T8 + T], decode_block_tables=d32[: D * W].view(D, W),
                          decode_context_lens=d32[c0 : c0 + D], logits_rows=d64[3 * T8 : 3 * T8 + nl])
        fill_pending(fb.input_ids, d64[3 * T8 + nl : 3 * T8 + nl + nf], d64[3 * T8 + nl + nf : n64], prev)
        mb = self.max_blocks
        for rng, lo, hi, (o, lo32, bo), p, max_q in views:
            fb.prefill[rng] = PrefillMeta(lo, hi, d32[o : o + p + 1], d32[lo32 : lo32 + p],
                                          d32[bo : bo + p * mb].view(p, mb), max_q)
        return fb

    def _pieces(self, batch: ScheduledBatch, lay: Layout) -> list | None:
        """Per prefill_attn instance: ((a, b), row_lo, row_hi, [(request, rows, context end)], max_q): the
        pieces of the prefill sequences inside its row range. A graph layout's instance runs to the end of its
        range (padding included); None if it has more pieces than the layout."""
        out, row = [], lay.decode_rows
        seq_rows = []
        for s in batch.seqs[batch.num_decode :]:
            seq_rows.append((row, s))
            row += s.num_tokens
        for inst in self.prefill_ranges:
            a, b = self.plan.rows(inst, lay.rows)
            lo, hi = max(a, lay.decode_rows), min(b, row)
            pieces, max_q = [], 0
            for r0, s in seq_rows:
                p0, p1 = max(r0, lo), min(r0 + s.num_tokens, hi)
                if p0 < p1:
                    pieces.append((s.request, p1 - p0, s.start + (p1 - r0)))  # context ends at the last row
                    max_q = max(max_q, p1 - p0)
            if lay.pieces:
                if len(pieces) > lay.pieces:
                    return None
                hi, max_q = b, max(b - lo, 0)
            out.append(((a, b), lo, max(lo, hi), pieces, max_q))
        return out

