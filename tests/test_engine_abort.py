"""LLMEngine.abort: a request whose client went away frees its KV at once, emits nothing more, and the
others still finish with exactly their lengths (sync and async scheduling, waiting and running)."""

import pytest

from engine import EngineConfig, LLMEngine
from engine.request import SamplingParams


def _engine(is_async):
    return LLMEngine(EngineConfig(model="tiny-llama", device="cpu", dtype="float32", async_scheduling=is_async,
                                  max_num_seqs=2, num_kv_blocks=64))


@pytest.mark.parametrize("is_async", [False, True])
def test_abort_frees_kv_and_keeps_the_rest_exact(is_async):
    eng = _engine(is_async)
    p = SamplingParams(max_tokens=12, ignore_eos=True)
    ids = [eng.add_request(list(range(1, 40)), p, request_id=f"r{i}") for i in range(3)]  # r2 waits (2 seqs)
    outs = {i: [] for i in ids}
    for _ in range(3):
        for o in eng.step():
            outs[o.request_id] += o.new_token_ids
    used = eng.block_manager.num_used
    assert eng.abort("r0") and eng.block_manager.num_used < used  # running: its blocks are free now
    assert eng.abort("r2")  # still waiting (max_num_seqs=2): dropped from the queue
    assert not eng.abort("r2") and not eng.abort("nope")
    n_r0 = len(outs["r0"])
    while eng.has_unfinished():
        for o in eng.step():
            outs[o.request_id] += o.new_token_ids
    assert len(outs["r1"]) == 12
    assert len(outs["r0"]) == n_r0 and not outs["r2"]  # a token in flight at the abort is dropped too
    assert eng.block_manager.num_used == 0 and eng.stats()["num_running"] == eng.stats()["num_waiting"] == 0
    assert not eng.requests and "r0" not in eng.runner.sampler.generators
