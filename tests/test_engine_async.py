"""Async scheduling (iteration n+1 scheduled and launched before n's tokens reach the host) must produce
exactly what synchronous stepping produces: same tokens, same stops, nothing lost, on CPU too."""

import pytest
import torch

from engine import EngineConfig, LLMEngine, SamplingParams

LENS = (3, 17, 40, 64, 9)


def run(is_async: bool, params_for, **kw):
    eng = LLMEngine(EngineConfig(model="tiny-llama", device="cpu", dtype="float32", async_scheduling=is_async,
                                 max_num_batched_tokens=48, max_model_len=512, **kw))
    g = torch.Generator().manual_seed(5)
    ids = [eng.add_request(torch.randint(0, 2048, (n,), generator=g).tolist(), params_for(i))
           for i, n in enumerate(LENS)]
    toks, finished = {i: [] for i in ids}, {}
    while eng.has_unfinished():
        for o in eng.step():
            assert o.request_id not in finished, "output after the request finished"
            toks[o.request_id] += o.new_token_ids
            assert o.num_output_tokens == len(toks[o.request_id])
            if o.is_finished:
                finished[o.request_id] = o.finish_reason
    assert eng.block_manager.num_free == eng.block_manager.num_blocks
    return [toks[i] for i in ids], [finished[i] for i in ids]


def test_async_equals_sync_greedy_and_sampled():
    params = lambda i: SamplingParams(max_tokens=10 + 3 * i, ignore_eos=True, temperature=0.0 if i % 2 else 0.8,
                                      top_k=50, top_p=0.9, seed=100 + i)
    assert run(True, params) == run(False, params)


def test_async_stops_at_eos_like_sync():
    # find a token the tiny model emits mid-sequence, then make it a stop token: the request must end
    # there, and the token already scheduled after it must be dropped
    free_run, _ = run(False, lambda i: SamplingParams(max_tokens=20, ignore_eos=True))
    stop = free_run[1][5]
    params = lambda i: SamplingParams(max_tokens=20, stop_token_ids=(stop,))
    sync_out, sync_why = run(False, params)
    async_out, async_why = run(True, params)
    assert async_out == sync_out and async_why == sync_why
    assert "stop" in sync_why and len(sync_out[1]) <= 6 and sync_out[1][-1] == stop


@pytest.mark.parametrize("is_async", [True, False])
def test_async_with_preemption_finishes_everything(is_async):
    params = lambda i: SamplingParams(max_tokens=24, ignore_eos=True)
    toks, why = run(is_async, params, block_size=8, num_kv_blocks=14, kv_overcommit=4.0)
    assert all(len(t) == 24 for t in toks) and set(why) == {"length"}
