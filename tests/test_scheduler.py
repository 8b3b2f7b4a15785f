"""Scheduler and block manager: invariants, dense-batch composition, admission, preemption, nothing lost.

These drive the scheduler with a fake model (the sampled token is a function of the request), so they run
without torch and check only host-side logic.
"""

import random

import pytest

from engine.block_manager import BlockManager
from engine.request import Request, RequestStatus, SamplingParams
from engine.scheduler import Scheduler, SchedulerConfig


def make(num_blocks=64, block_size=4, budget=32, max_seqs=16, chunked=True, overcommit=1.0, max_len=512):
    bm = BlockManager(num_blocks, block_size)
    cfg = SchedulerConfig(max_num_batched_tokens=budget, max_num_seqs=max_seqs, max_model_len=max_len,
                          enable_chunked_prefill=chunked, kv_overcommit=overcommit, eos_token_ids=(0,))
    return Scheduler(cfg, bm), bm


def req(prompt_len, out_len, ignore_eos=True):
    return Request(list(range(1, prompt_len + 1)), SamplingParams(max_tokens=out_len, ignore_eos=ignore_eos))


def run_to_end(s: Scheduler, bm: BlockManager, max_steps=10_000, token=lambda r: 7):
    steps, batches = 0, []
    while s.has_unfinished():
        batch = s.schedule()
        batches.append(batch)
        assert batch.seqs, "no progress"
        check_batch(s, bm, batch)
        s.postprocess(batch, [token(x.request) if x.samples else None for x in batch.seqs])
        bm.check_invariants()
        steps += 1
        assert steps < max_steps
    return batches


def check_batch(s, bm, batch):
    c = s.config
    assert batch.num_tokens <= c.max_num_batched_tokens
    assert len(batch.seqs) <= c.max_num_seqs
    seen = set()
    for i, x in enumerate(batch.seqs):
        r = x.request
        assert id(r) not in seen, "a request twice in one batch"
        seen.add(id(r))
        assert r.status is RequestStatus.RUNNING
        assert x.start == r.num_computed_tokens
        # the blocks cover every token that will be in the cache after this step
        assert len(r.block_ids) * bm.block_size >= x.start + x.num_tokens
        if i < batch.num_decode:
            assert x.num_tokens == 1 and x.samples
    used = sum(len(r.block_ids) for r in s.running)
    assert used == bm.num_used


def test_block_manager_allocate_free_and_refcounts():
    bm = BlockManager(8, 16)
    a = bm.allocate(3)
    assert bm.num_free == 5 and len(set(a)) == 3
    bm.share(a[0])
    bm.free(a)
    assert bm.num_free == 7  # a[0] still referenced once
    bm.free([a[0]])
    assert bm.num_free == 8
    with pytest.raises(RuntimeError, match="double free"):
        bm.free([a[0]])
    with pytest.raises(RuntimeError, match="out of KV blocks"):
        bm.allocate(9)
    bm.check_invariants()
    assert bm.blocks_for(0) == 0 and bm.blocks_for(16) == 1 and bm.blocks_for(17) == 2


def test_decode_first_then_chunked_prefill_fills_budget():
    s, bm = make(budget=16, block_size=4)
    a = req(5, 4)
    s.add(a)
    b1 = s.schedule()
    assert [(x.start, x.num_tokens, x.samples) for x in b1.seqs] == [(0, 5, True)]
    s.postprocess(b1, [9])
    s.add(req(30, 2))
    b2 = s.schedule()
    # a decodes first (1 token), the new request's prefill is chunked to the remaining 15
    assert b2.num_decode == 1 and b2.seqs[0].request is a
    assert b2.seqs[1].num_tokens == 15 and not b2.seqs[1].samples
    assert b2.num_tokens == 16


def test_every_request_finishes_with_exact_lengths_random_workload():
    rng = random.Random(0)
    s, bm = make(num_blocks=200, block_size=4, budget=24, max_seqs=8)
    reqs = [req(rng.randint(1, 60), rng.randint(1, 40)) for _ in range(40)]
    for r in reqs:
        s.add(r)
    run_to_end(s, bm)
    assert all(r.is_finished and len(r.output_ids) == r.params.max_tokens for r in reqs)
    assert bm.num_free == bm.num_blocks
    assert s.num_preemptions == 0  # the admission prediction never over-commits at factor 1.0


def test_admission_prediction_holds_back_instead_of_preempting():
    # 10 blocks of 4 tokens = 40 tokens. Each request ends at 8 + 12 - 1 = 19 tokens (5 blocks):
    # all three fit now (2 blocks each) but not at their peak; prediction admits two.
    s, bm = make(num_blocks=10, block_size=4, budget=64)
    reqs = [req(8, 12) for _ in range(3)]
    for r in reqs:
        s.add(r)
    b = s.schedule()
    assert len(b.seqs) == 2 and len(s.waiting) == 1
    run_to_end(s, bm)
    assert s.num_preemptions == 0 and all(r.is_finished for r in reqs)


def test_overcommitted_cache_preempts_by_recompute_and_loses_nothing():
    s, bm = make(num_blocks=10, block_size=4, budget=64, overcommit=3.0)
    reqs = [req(8, 12) for _ in range(3)]
    for r in reqs:
        s.add(r)
    token = lambda r: 100 + len(r.output_ids)  # output depends only on position: recompute must not change it
    run_to_end(s, bm, token=token)
    assert s.num_preemptions > 0
    for r in reqs:
        assert r.is_finished and r.output_ids == [100 + i for i in range(12)]
    assert bm.num_free == bm.num_blocks


def test_preempted_request_recomputes_prompt_and_outputs():
    s, bm = make(num_blocks=6, block_size=4, budget=64, overcommit=5.0)
    a, b = req(8, 10), req(8, 10)
    s.add(a)
    s.add(b)
    saw_recompute = False
    while s.has_unfinished():
        batch = s.schedule()
        for x in batch.seqs:
            r = x.request
            if r.num_preemptions and x.start == 0:
                assert x.num_tokens == r.num_tokens or x.num_tokens < r.num_tokens  # prompt + outputs so far
                saw_recompute |= len(r.output_ids) > 0
        s.postprocess(batch, [5 if x.samples else None for x in batch.seqs])
        bm.check_invariants()
    assert saw_recompute and a.is_finished and b.is_finished


def test_no_chunking_prefills_whole_prompt_or_waits():
    s, bm = make(budget=16, chunked=False)
    s.add(req(10, 3))
    s.add(req(10, 3))
    b = s.schedule()
    assert len(b.seqs) == 1 and b.seqs[0].num_tokens == 10 and b.seqs[0].samples
    with pytest.raises(ValueError, match="chunked prefill off"):
        s.add(req(20, 1))


def test_eos_stops_unless_ignored():
    s, bm = make()
    r1, r2 = req(4, 10, ignore_eos=False), req(4, 10, ignore_eos=True)
    s.add(r1)
    s.add(r2)
    run_to_end(s, bm, token=lambda r: 0)  # 0 is EOS
    assert r1.finish_reason == "stop" and len(r1.output_ids) == 1
    assert r2.finish_reason == "length" and len(r2.output_ids) == 10


def test_requests_that_can_never_fit_are_rejected_with_a_reason():
    s, _ = make(num_blocks=4, block_size=4, max_len=64)
    with pytest.raises(ValueError, match="max_model_len"):
        s.add(req(60, 10))
    with pytest.raises(ValueError, match="KV cache"):
        s.add(req(20, 10))
    with pytest.raises(ValueError, match="empty prompt"):
        s.add(Request([], SamplingParams()))


def test_max_num_seqs_caps_running():
    s, bm = make(max_seqs=3, budget=100)
    for _ in range(6):
        s.add(req(2, 5))
    b = s.schedule()
    assert len(b.seqs) == 3 and len(s.running) == 3


def test_decode_row_padding_comes_out_of_the_prefill_budget():
    """decode_row_align: a full mixed batch's decode rows, padded up to the alignment, plus its prefill
    tokens never exceed the budget, so a full batch keeps one padded shape (one mixed CUDA-graph bucket)."""
    align, budget = 8, 64
    bm = BlockManager(4096, 4)
    s = Scheduler(SchedulerConfig(max_num_batched_tokens=budget, max_num_seqs=32, max_model_len=512,
                                  decode_row_align=align), bm)
    rng = random.Random(3)
    for _ in range(60):
        s.add(req(rng.randint(20, 90), rng.randint(2, 30)))
    shapes, full = set(), 0
    for batch in run_to_end(s, bm):
        d, p = batch.num_decode, batch.num_prefill_tokens
        padded = -(-d // align) * align
        if p:
            assert padded + p <= budget, (d, p)
            if padded + p == budget:
                full += 1
                shapes.add(padded)
    assert full > 10 and len(shapes) <= budget // align
    # without the alignment the same work fills the budget to the token
    s2, bm2 = make(num_blocks=4096, budget=budget, max_seqs=32)
    rng = random.Random(3)
    for _ in range(60):
        s2.add(req(rng.randint(20, 90), rng.randint(2, 30)))
    assert any(b.num_tokens == budget and b.num_decode % align for b in run_to_end(s2, bm2))
