"""Nano-batch plans on CPU: every plan gives the sequential plan's tokens and logits (fp32).

On CPU the executor runs instances in issue order; the plan's row ranges still cut every op, so this
checks the slicing, the per-range prefill metadata and the decode/prefill boundary handling.
"""

import pytest
import torch

from engine import EngineConfig, LLMEngine, SamplingParams
from engine.plan import LAYER_OPS
from engine.plan_library import nano_batch_plan

LENS = (3, 17, 40, 64, 9, 120)


def run(plan_path=None, bucketed=False, **kw):
    """bucketed: mixed and decode-only steps run in the CUDA-graph layouts of engine.mixed_graphs and
    engine.graphs (padded rows, full-width block tables; no graph on CPU)."""
    eng = LLMEngine(EngineConfig(model="tiny-llama", device="cpu", dtype="float32", keep_logits=True,
                                 poison_kv_cache=True, max_model_len=512, max_num_batched_tokens=96,
                                 plan=plan_path, **kw))
    if bucketed:
        from engine.graphs import DecodeGraphs
        from engine.mixed_graphs import MixedGraphs

        r = eng.runner
        r.mixed_graphs = MixedGraphs(r, r.max_tokens, min(r.config.max_num_seqs, r.max_tokens))
        r.graphs = DecodeGraphs(r, min(r.config.max_num_seqs, r.max_tokens))
    g = torch.Generator().manual_seed(3)
    ids = [eng.add_request(torch.randint(0, 2048, (n,), generator=g).tolist(),
                           SamplingParams(max_tokens=12, ignore_eos=True)) for n in LENS]
    toks, logits = {i: [] for i in ids}, {i: [] for i in ids}
    while eng.has_unfinished():
        for o in eng.step():
            toks[o.request_id] += o.new_token_ids
            logits[o.request_id].append(eng.last_logits[o.request_id])
    if bucketed:  # the layout ran on mixed steps, padded ones among them
        assert eng.runner.mixed_graphs.num_runs > 0
    return [toks[i] for i in ids], [torch.stack(logits[i]) for i in ids]


@pytest.mark.parametrize("num_nano_batches, align", [(2, 1), (3, 8), (4, 16)])
def test_nano_batch_plans_match_sequential(tmp_path, num_nano_batches, align):
    path = tmp_path / "plan.json"
    nano_batch_plan(num_nano_batches, decode_sm_budget=40, align=align).save(path)
    ref_tokens, ref_logits = run()
    tokens, logits = run(str(path))
    assert tokens == ref_tokens
    for a, b in zip(logits, ref_logits, strict=True):
        assert ((a - b).norm() / b.norm()).item() <= 1e-5


@pytest.mark.parametrize("name", ["nb2-cublas-sm3", "nb2-green-sm4", "nb3-sm2-prio", "nb2-pf0-rev",
                                  "nb3-sm2-pf0-rev"])
def test_partitioned_plans_match_sequential_on_cpu(tmp_path, name):
    """On CPU, partitions (cuBLAS targets, green contexts, priorities) are no-ops; the slicing still runs."""
    from engine.plan_library import plan_from_name

    path = tmp_path / "plan.json"
    plan_from_name(name, 8).save(path)
    ref_tokens, ref_logits = run()
    tokens, logits = run(str(path))
    assert tokens == ref_tokens
    for a, b in zip(logits, ref_logits, strict=True):
        assert ((a - b).norm() / b.norm()).item() <= 1e-5


@pytest.mark.parametrize("name", ["sequential", "nb2", "nb3-pf0-rev"])
def test_mixed_graph_layout_matches_the_plain_batch(tmp_path, name):
    """The padded layout mixed CUDA graphs replay (decode padding rows, prefill rows after them, tail rows,
    empty prefill pieces) gives the plain layout's tokens and logits; on a GPU the same layout is captured."""
    from engine.plan_library import resolve_plan

    path = tmp_path / "plan.json"
    resolve_plan(name, None).save(path)
    ref_tokens, ref_logits = run(str(path))
    tokens, logits = run(str(path), bucketed=True)
    assert tokens == ref_tokens
    for a, b in zip(logits, ref_logits, strict=True):
        assert ((a - b).norm() / b.norm()).item() <= 1e-5


def test_mixed_graph_layout_with_max_num_seqs_not_a_multiple_of_the_decode_step():
    """Decode rows round up to DECODE_STEP (32) past max_num_seqs (5 here): the static buffers hold them."""
    ref_tokens, ref_logits = run(max_num_seqs=5)
    tokens, logits = run(bucketed=True, max_num_seqs=5)
    assert tokens == ref_tokens
    for a, b in zip(logits, ref_logits, strict=True):
        assert ((a - b).norm() / b.norm()).item() <= 1e-5


def test_graph_layouts_through_preemption_and_row_reuse():
    """Requests preempted (their blocks freed, re-admitted with new ones) and more requests than table rows
    (rows of finished requests reused): the graph layouts, fed from the persistent block table, still give
    the plain layout's tokens and logits."""
    kw = dict(block_size=8, num_kv_blocks=20, kv_overcommit=4.0, max_num_seqs=3)
    ref_tokens, ref_logits = run(**kw)
    tokens, logits = run(bucketed=True, **kw)
    assert tokens == ref_tokens
    for a, b in zip(logits, ref_logits, strict=True):
        assert ((a - b).norm() / b.norm()).item() <= 1e-5


def test_mixed_graph_buckets_pad_within_the_token_rounding():
    from engine.mixed_graphs import DECODE_STEP, TOKEN_STEP, bucket

    for tokens in range(1, 300, 7):
        for decode in range(0, tokens, 5):
            t, d = bucket(decode, tokens, 256 if tokens <= 256 else tokens)
            assert tokens <= t < tokens + TOKEN_STEP and (t % TOKEN_STEP == 0 or t == max(tokens, 256))
            assert decode <= d < decode + DECODE_STEP and d + (tokens - decode) <= t


def test_step_timings_cover_every_op_of_every_layer():
    eng = LLMEngine(EngineConfig(model="tiny-llama-micro", device="cpu", dtype="float32"))
    eng.add_request([1, 2, 3, 4, 5], SamplingParams(max_tokens=3, ignore_eos=True))
    timings = []
    eng.step(timings)
    ops = {(t.layer, t.op) for t in timings}
    expected = {(layer, op) for layer in range(2) for op in LAYER_OPS}  # decode_attn: a no-op, timed too
    assert ops == expected
    assert all(t.end_ms >= t.start_ms for t in timings)


def test_attention_over_rows_of_the_other_kind_is_skipped():
    """Skipped instances record no event, so consumers on the other stream never wait behind them."""
    from engine.models.forward import ForwardBatch, PrefillMeta
    from engine.pipeline import has_work

    empty = torch.zeros(0, dtype=torch.int64)
    fb = ForwardBatch(num_tokens=10, num_decode=4, input_ids=empty, positions=empty, slot_mapping=empty,
                      decode_block_tables=empty, decode_context_lens=empty, logits_rows=empty)
    fb.prefill[(5, 10)] = PrefillMeta(5, 10, empty, empty, empty, max_seqlen_q=5)
    fb.prefill[(0, 4)] = PrefillMeta(4, 4, empty, empty, empty, max_seqlen_q=0)
    assert has_work("decode_attn", 0, 5, fb) and not has_work("decode_attn", 5, 10, fb)
    assert has_work("prefill_attn", 5, 10, fb) and not has_work("prefill_attn", 0, 4, fb)
    assert not has_work("prefill_attn", 2, 3, fb)  # no metadata: no prefill rows in the range
    assert has_work("qkv", 5, 10, fb) and not has_work("qkv", 3, 3, fb)


def test_engine_takes_a_plan_name_or_file(tmp_path):
    from engine.errors import EngineConfigError
    from engine.plan_library import resolve_plan

    eng = LLMEngine(EngineConfig(model="tiny-llama-micro", device="cpu", dtype="float32", plan="nb2-pf0-rev"))
    assert eng.runner.plan.name == "nb2-pf0-rev" and eng.runner.plan.num_nano_batches == 2
    assert resolve_plan(None).name == "sequential"
    path = tmp_path / "p.json"
    resolve_plan("nb3-sm8").save(path)
    assert resolve_plan(str(path)) == resolve_plan("nb3-sm8")
    with pytest.raises(EngineConfigError, match=r"plan name 'fastest'.*\(or a plan JSON file\)"):
        resolve_plan("fastest")
    with pytest.raises(EngineConfigError, match="nope.json: no such plan file"):
        resolve_plan("nope.json")


def test_mixed_graph_cache_replaces_only_stale_graphs(monkeypatch):
    """At MAX_GRAPHS a new bucket replaces the least recently used graph once that one has been idle for
    EVICT_AFTER mixed steps (a rate sweep moving to new shapes gets graphs for them); a recently used one
    stays and the new bucket runs eagerly."""
    import engine.mixed_graphs as mg_mod

    monkeypatch.setattr(mg_mod, "MAX_GRAPHS", 3)
    monkeypatch.setattr(mg_mod, "EVICT_AFTER", 10)
    eng = LLMEngine(EngineConfig(model="tiny-llama", device="cpu", dtype="float32", max_model_len=128))
    mg = mg_mod.MixedGraphs(eng.runner, 96, 8)
    for step, key in enumerate([(64, 32), (128, 32), (192, 32)]):
        mg.graphs[key], mg.last_used[key] = object(), step
    mg.graphs[(64, 32)] = mg.graphs.pop((64, 32))  # (64, 32) used again: (128, 32) is now the oldest
    mg.last_used[(64, 32)] = 3
    mg.num_mixed = 5
    assert not mg._room() and len(mg.graphs) == 3  # the oldest ran 4 steps ago: kept
    mg.num_mixed = 12
    assert mg._room() and (128, 32) not in mg.graphs and mg.num_evicted == 1
