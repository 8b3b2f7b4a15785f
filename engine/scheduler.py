"""The global dense batch: which tokens of which requests run in the next iteration. Plain Python, no torch.

Each iteration every running request in decode contributes one token (decode first, so decode latency
never waits behind prefill), then chunked prefill fills the token budget. Admission predicts each
request's KV need over its whole life, so requests are not admitted only to be evicted; if the cache
still runs out (an over-committed cache, or a caller's own limits), the newest request is preempted by
recompute: its blocks are freed and it goes back to the front of the queue, keeping its output tokens.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from engine.block_manager import BlockManager
from engine.request import PENDING_TOKEN, Request, RequestOutput, RequestStatus


@dataclass
class ScheduledSeq:
    request: Request
    start: int  # position of the first token computed this iteration (= tokens already in the cache)
    num_tokens: int  # tokens computed this iteration
    samples: bool  # the chunk reaches the request's last known token, so a new token is sampled


@dataclass
class ScheduledBatch:
    """One iteration's dense batch: decode sequences first, then prefill chunks."""

    seqs: list[ScheduledSeq]
    num_decode: int
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.seqs)

    @property
    def num_prefill_tokens(self) -> int:
        return self.num_tokens - self.num_decode

    @property
    def is_decode_only(self) -> bool:
        return self.num_decode == len(self.seqs)

    def __len__(self) -> int:
        return len(self.seqs)


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_batched_tokens: int
    max_num_seqs: int
    max_model_len: int
    enable_chunked_prefill: bool = True
    kv_overcommit: float = 1.0  # admit while predicted peak KV <= this x cache; > 1 trades preemption for load
    eos_token_ids: tuple[int, ...] = ()
    # rows a mixed batch's decode part is padded to (engine.sizing.DECODE_ROW_ALIGN under mixed CUDA graphs):
    # the padding comes out of the prefill budget, so a full batch has the same padded shape every step
    decode_row_align: int = 1


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager):
        self.config = config
        self.blocks = block_manager
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self._eos = frozenset(config.eos_token_ids)
        self.num_preemptions = 0

    # ---- intake -------------------------------------------------------------------------------------
    def check_fits(self, req: Request) -> str | None:
        """Why this request can never run here, or None if it can."""
        c = self.config
        total = req.num_prompt_tokens + req.params.max_tokens
        if req.num_prompt_tokens < 1:
            return "empty prompt"
        if total > c.max_model_len:
            return (f"prompt {req.num_prompt_tokens} + max_tokens {req.params.max_tokens} = {total} tokens "
                    f"exceeds max_model_len {c.max_model_len}")
        if self.blocks.blocks_for(req.max_total_tokens) > self.blocks.num_blocks:
            return (f"needs {req.max_total_tokens} tokens of KV cache; the cache holds "
                    f"{self.blocks.num_blocks * self.blocks.block_size}")
        if not c.enable_chunked_prefill and req.max_total_tokens > c.max_num_batched_tokens:
            return (f"prompt of {req.num_prompt_tokens} tokens cannot be prefilled in one iteration of "
                    f"{c.max_num_batched_tokens} tokens with chunked prefill off")
        return None

    def add(self, req: Request) -> None:
        reason = self.check_fits(req)
        if reason:
            raise ValueError(f"request {req.request_id}: {reason}")
        req.status = RequestStatus.WAITING
        self.waiting.append(req)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # ---- admission prediction -----------------------------------------------------------------------
    def _peak_blocks(self, reqs: list[Request]) -> float:
        """Upper bound on the blocks these requests will hold at once until they all finish.

        Every request in a dense batch grows by one token per iteration (prefill finishes first, so its
        known tokens count as held), reaches max_total_tokens and is freed. Sorted by remaining growth r,
        the usage just before request k frees is sum over the longer-lived j of (held_j + r_k) tokens.
        """
        bs = self.blocks.block_size
        items = sorted((r.max_total_tokens - max(r.num_tokens, r.num_computed_tokens), r.num_tokens)
                       for r in reqs)
        peak, held_suffix = 0.0, 0.0
        for k in range(len(items) - 1, -1, -1):  # suffix sums from the longest-lived down
            remaining, held = items[k]
            held_suffix += held
            alive = len(items) - k
            peak = max(peak, (held_suffix + alive * remaining) / bs + alive)
        return peak

    def _can_admit(self, req: Request) -> bool:
        limit = self.config.kv_overcommit * self.blocks.num_blocks
        optimistic = sum(self.blocks.blocks_for(r.max_total_tokens) for r in self.running)
        if optimistic + self.blocks.blocks_for(req.max_total_tokens) <= limit:
            return True  # even if everyone reached full length at once, it fits
        return self._peak_blocks(self.running + [req]) <= limit

    # ---- one iteration ------------------------------------------------------------------------------
    def _preempt_newest(self, keep: Request) -> bool:
        """Free the newest running request other than `keep` (or `keep` itself if it is the only one)."""
        victim = self.running[-1]
        self.running.pop()
        self.blocks.free(victim.block_ids)
        victim.block_ids = []
        victim.num_computed_tokens = 0
        victim.status = RequestStatus.WAITING
        victim.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(victim)
        self._preempted.append(victim)
        return victim is not keep

    def _grow(self, req: Request, num_tokens: int) -> bool:
        """Make room in req's blocks for num_tokens more tokens, preempting newer requests if needed."""
        need = self.blocks.blocks_for(req.num_computed_tokens + num_tokens) - len(req.block_ids)
        while need > 0 and not self.blocks.can_allocate(need):
            if not self._preempt_newest(keep=req):
                return False
        if need > 0:
            req.block_ids += self.blocks.allocate(need)
        return True

    def schedule(self) -> ScheduledBatch:
        c = self.config
        budget = c.max_num_batched_tokens
        self._preempted: list[Request] = []
        decode: list[ScheduledSeq] = []
        prefill: list[ScheduledSeq] = []
        # 1. Decode: one token each, oldest first. Victims come from the newest end of `running`.
        bs = self.blocks.block_size
        for req in list(self.running):
            if req.status is not RequestStatus.RUNNING or budget == 0:
                continue
            computed = req.num_computed_tokens
            if req.num_tokens - computed != 1:
                continue
            if computed < len(req.block_ids) * bs or self._grow(req, 1):  # (room in its last block: no growth)
                decode.append(ScheduledSeq(req, req.num_computed_tokens, 1, True))
                budget -= 1
        budget = max(0, budget - (-len(decode)) % c.decode_row_align)  # the decode rows' padding
        # 2. Running requests part-way through a chunked prefill.
        for req in self.running:
            todo = req.num_tokens - req.num_computed_tokens
            if todo > 1 and budget > 0 and req.status is RequestStatus.RUNNING:
                n = min(todo, budget)
                if self._grow(req, n):
                    prefill.append(ScheduledSeq(req, req.num_computed_tokens, n, n == todo))
                    budget -= n
        # 3. Admit waiting requests while tokens, sequence slots and predicted KV allow.
        while self.waiting and budget > 0 and len(self.running) < c.max_num_seqs:
            req = self.waiting[0]
            if req.has_pending:  # preempted with a token still on the GPU: recompute once it is known
                break
            todo = req.num_tokens
            if not c.enable_chunked_prefill and todo > budget:
                break
            if not self._can_admit(req):
                break
            n = min(todo, budget)
            need = self.blocks.blocks_for(n)
            if not self.blocks.can_allocate(need):
                break
            self.waiting.popleft()
            req.block_ids = self.blocks.allocate(need)
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            prefill.append(ScheduledSeq(req, 0, n, n == todo))
            budget -= n
        # a request both scheduled and then preempted in this pass must not run
        preempted = set(map(id, self._preempted))
        decode = [s for s in decode if id(s.request) not in preempted]
        prefill = [s for s in prefill if id(s.request) not in preempted]
        return ScheduledBatch(decode + prefill, len(decode), self._preempted)

    def _finish(self, req: Request, reason: str) -> None:
        req.status = RequestStatus.FINISHED
        req.finish_reason = reason
        if req.block_ids:
            self.blocks.free(req.block_ids)
            req.block_ids = []
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:  # preempted while its last token was still on the GPU
            self.waiting.remove(req)

    def abort(self, req: Request) -> bool:
        """Drop a request wherever it is (a client went away): its KV blocks are freed now. A token of it
        still on the GPU (async scheduling) is discarded when its iteration resolves. False if it had
        already finished."""
        if req.is_finished:
            return False
        del req.output_ids[req.num_resolved:]  # pending slots: resolve() skips a request with none
        self._finish(req, "abort")
        return True

    def advance(self, batch: ScheduledBatch) -> None:
        """The batch has been launched: count its tokens as computed and give each sampling request a
        PENDING_TOKEN slot, so the next iteration can be scheduled before the tokens are known. A request
        that reached max_tokens is finished (and its blocks freed) now: that needs no token value."""
        for seq in batch.seqs:
            req = seq.request
            if req.is_finished:
                continue
            req.num_computed_tokens = seq.start + seq.num_tokens
            if seq.samples:
                req.output_ids.append(PENDING_TOKEN)
                if len(req.output_ids) >= req.params.max_tokens:
                    self._finish(req, "length")

    def resolve(self, batch: ScheduledBatch, sampled: list[int | None]) -> list[RequestOutput]:
        """The batch's sampled tokens reached the host: fill the pending slots, stop at EOS/stop tokens.
        (Runs once per step over every sequence: attribute reads are kept to the few each row needs.)"""
        outputs = []
        emit = outputs.append
        eos = self._eos
        finished = RequestStatus.FINISHED
        for seq, tok in zip(batch.seqs, sampled, strict=True):
            if not seq.samples:
                continue
            req = seq.request
            outs, n = req.output_ids, req.num_resolved
            if n >= len(outs):
                continue  # (a request stopped by an earlier token had its later slots dropped)
            outs[n] = tok
            n = req.num_resolved = n + 1
            p = req.params
            if not p.ignore_eos and req.finish_reason is None and (tok in eos or tok in p.stop_token_ids):
                del outs[n:]  # tokens scheduled after the stop are discarded
                self._finish(req, "stop")
            done = req.status is finished and n == len(outs)
            emit(RequestOutput(req.request_id, [tok], done, req.finish_reason if done else None, n))
        return outputs

    def postprocess(self, batch: ScheduledBatch, sampled: list[int | None]) -> list[RequestOutput]:
        """Synchronous step: advance and resolve at once."""
        self.advance(batch)
        return self.resolve(batch, sampled)
