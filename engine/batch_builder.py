"""ScheduledBatch (host) -> ForwardBatch (device tensors), with one host-to-device copy per dtype.

numpy does the per-token arithmetic; only the per-sequence loop is Python.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.models.forward import ForwardBatch, PrefillMeta
from engine.plan import PipelinePlan
from engine.scheduler import ScheduledBatch


class BatchBuilder:
    def __init__(self, plan: PipelinePlan, block_size: int, max_blocks_per_seq: int, device: torch.device):
        self.plan = plan
        self.bs = block_size
        self.max_blocks = max_blocks_per_seq
        self.device = device
        self.prefill_ranges = [i for i in plan.ops if i.op == "prefill_attn"]

    def host_arrays(self, batch: ScheduledBatch, pad_to: int | None = None,
                    pending: dict[str, int] | None = None, decode_rows: int | None = None) -> dict[str, np.ndarray]:
        """The batch as numpy arrays (rows padded to pad_to for CUDA-graph buckets).

        decode_rows: rows [0, decode_rows) are decode rows (the real ones first, then padding) and prefill
        rows start there (a mixed CUDA-graph bucket); default: the batch's own decode count.

        pending: request id -> index of its token in the previous iteration's sampled tensor, for decode
        rows whose input token is still on the GPU (async scheduling); those rows are listed in
        fix_rows / fix_src and filled on the device.
        """
        bs = self.bs
        n_rows = pad_to or batch.num_tokens
        ids = np.zeros(n_rows, np.int64)
        pos = np.zeros(n_rows, np.int64)
        slots = np.full(n_rows, -1, np.int64)
        nd = batch.num_decode
        nd_rows = decode_rows if decode_rows is not None else (pad_to if (pad_to and batch.is_decode_only) else nd)
        # eager batches trim block tables to the longest sequence here (attention sizes its split-KV from
        # the width); CUDA-graph buckets keep the full width so the captured shapes stay static
        width = self.max_blocks if pad_to else max((len(s.request.block_ids) for s in batch.seqs[:nd]), default=1)
        dec_bt = np.zeros((nd_rows, width), np.int32)
        dec_ctx = np.ones(nd_rows, np.int32)  # padding rows attend to one (garbage) token, never NaN
        logits_rows, fix_rows, fix_src = [], [], []
        row = 0
        for i, s in enumerate(batch.seqs):
            req, n, start = s.request, s.num_tokens, s.start
            blocks = req.block_ids
            if i == nd:  # prefill rows begin after the (padded) decode rows
                row = nd_rows
            if i < nd:  # decode: one token at position `start`, the request's newest token
                if req.has_pending:  # the token is still on the GPU: gathered there (fix_rows)
                    fix_rows.append(row)
                    fix_src.append(pending[req.request_id])
                else:
                    ids[row] = req.output_ids[-1] if req.output_ids else req.prompt_ids[-1]
                pos[row] = start
                slots[row] = blocks[start // bs] * bs + start % bs
                dec_bt[i, : len(blocks)] = blocks
                dec_ctx[i] = start + 1
            else:
                p = np.arange(start, start + n)
                known = req.prompt_ids if start + n <= req.num_prompt_tokens else req.all_ids
                ids[row : row + n] = known[start : start + n]
                pos[row : row + n] = p
                slots[row : row + n] = np.asarray(blocks, np.int64)[p // bs] * bs + p % bs
            row += n
            if s.samples:
                logits_rows.append(row - 1)
        return {"ids": ids, "pos": pos, "slots": slots, "dec_bt": dec_bt, "dec_ctx": dec_ctx,
                "logits_rows": np.asarray(logits_rows, np.int64),
                "fix_rows": np.asarray(fix_rows, np.int64), "fix_src": np.asarray(fix_src, np.int64)}

    def prefill_meta(self, batch: ScheduledBatch, n_rows: int, decode_rows: int | None = None,
                     max_pieces: int | None = None) -> list[tuple[tuple[int, int], dict]] | None:
        """For each prefill_attn instance's row range: the pieces of prefill sequences inside it.

        max_pieces (a mixed CUDA-graph bucket): static shapes. Each instance's rows run to the end of its
        range, padding included, and its pieces are padded with empty ones to max_pieces; None if more."""
        out = []
        nd = batch.num_decode
        start = nd if decode_rows is None else decode_rows
        seq_rows, row = [], start
        for s in batch.seqs[nd:]:
            seq_rows.append((row, s))
            row += s.num_tokens
        for inst in self.prefill_ranges:
            a, b = self.plan.rows(inst, n_rows)
            lo, hi = max(a, start), min(b, row)
            cu, lens, bts, max_q = [0], [], [], 0
            for r0, s in seq_rows:
                p0, p1 = max(r0, lo), min(r0 + s.num_tokens, hi)
                if p0 >= p1:
                    continue
                cu.append(cu[-1] + p1 - p0)
                lens.append(s.start + (p1 - r0))  # context ends at the piece's last row
                bt = np.zeros(self.max_blocks, np.int32)
                bt[: len(s.request.block_ids)] = s.request.block_ids
                bts.append(bt)
                max_q = max(max_q, p1 - p0)
            if max_pieces is not None:
                if len(lens) > max_pieces:
                    return None
                pad = max_pieces - len(lens)
                cu += [cu[-1]] * pad
                lens += [0] * pad
                bts += [np.zeros(self.max_blocks, np.int32)] * pad
                hi, max_q = b, max(b - lo, 0)
            out.append(((a, b), {"row_lo": lo, "row_hi": max(lo, hi), "cu": np.asarray(cu, np.int32),
                                 "lens": np.asarray(lens, np.int32),
                                 "bt": np.stack(bts) if bts else np.zeros((0, self.max_blocks), np.int32),
                                 "max_q": max_q}))
        return out

    def build(self, batch: ScheduledBatch, prev=None) -> ForwardBatch:
        """prev: the previous iteration's StepHandle when some input tokens are still on the GPU."""
        h = self.host_arrays(batch, pending=prev.sample_index if prev else None)
        metas = self.prefill_meta(batch, batch.num_tokens)
        # pack every int64 array and every int32 array into one buffer each: two copies, not a dozen
        i64 = [h["ids"], h["pos"], h["slots"], h["logits_rows"], h["fix_rows"], h["fix_src"]]
        i32 = [h["dec_bt"].ravel(), h["dec_ctx"]]
        for _, m in metas:
            i32 += [m["cu"], m["lens"], m["bt"].ravel()]
        d64 = upload(i64, self.device)
        d32 = upload(i32, self.device)
        nd = batch.num_decode
        fb = ForwardBatch(num_tokens=batch.num_tokens, num_decode=nd, input_ids=d64[0], positions=d64[1],
                          slot_mapping=d64[2], logits_rows=d64[3],
                          decode_block_tables=d32[0].view(nd, -1) if nd else d32[0].view(0, 1),
                          decode_context_lens=d32[1])
        fill_pending(fb.input_ids, d64[4], d64[5], prev)
        for k, (rng, m) in enumerate(metas):
            cu, lens, bt = d32[2 + 3 * k : 5 + 3 * k]
            fb.prefill[rng] = PrefillMeta(m["row_lo"], m["row_hi"], cu, lens, bt.view(-1, self.max_blocks),
                                          m["max_q"])
        return fb


def upload(arrays: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """Arrays of one dtype -> device views of them, through one pinned buffer and one asynchronous copy."""
    flat = np.concatenate(arrays) if arrays else np.zeros(0)
    t = torch.from_numpy(flat)
    if device.type == "cuda":
        t = t.pin_memory().to(device, non_blocking=True)
    out, off = [], 0
    for a in arrays:
        out.append(t[off : off + a.size])
        off += a.size
    return out


def fill_pending(input_ids: torch.Tensor, rows: torch.Tensor, src: torch.Tensor, prev) -> None:
    """input_ids[rows] = previous iteration's sampled tokens[src], on the device (no host round trip)."""
    if rows.numel():
        input_ids[rows] = prev.tokens_dev[src]
