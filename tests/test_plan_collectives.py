"""Collective ops in plans, and the engine's sizing facts (engine/sizing.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import EngineConfigError
from engine.plan import COLLECTIVE_OPS, OpInstance, PipelinePlan
from engine.plan_library import MAX_NANO_BATCHES, nano_batch_plan, resolve_plan
from engine.presets import get_preset
from engine.sizing import check_tp, default_max_model_len, min_tp_that_fits, shard_shapes

ROOT = Path(__file__).resolve().parents[1]


def test_plans_without_collectives_get_them_after_their_gemms():
    plan = resolve_plan("nb2").with_collectives()
    plan.validate()
    ops = [(i.op, i.lo, i.stream) for i in plan.ops]
    for k, (op, lo, stream) in enumerate(ops):
        if op in COLLECTIVE_OPS.values():
            assert ops[k + 1] == ({v: c for c, v in COLLECTIVE_OPS.items()}[op], lo, stream)
    assert len(plan.collective_ops) == 4
    # mlp_norm now waits for the all-reduce of its rows
    k = next(k for k, i in enumerate(plan.ops) if i.op == "mlp_norm")
    assert {plan.ops[j].op for j in plan.producers(k)} == {"o_proj", "o_allreduce"}


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "results").rglob("plan*.json")))
def test_committed_plan_files_still_load(path):
    PipelinePlan.load(ROOT / path).with_collectives().validate()


def test_own_stream_plan_overlaps_and_partial_placement_is_refused():
    plan = resolve_plan("nb2-ar")
    assert plan.num_streams == 3 and {i.stream for i in plan.collective_ops} == {2}
    order = [(i.op, i.lo) for i in plan.ops]  # nano-batch 1's o_proj is issued before nano-batch 0's mlp_norm
    assert order.index(("o_proj", 0.5)) < order.index(("mlp_norm", 0.0))
    half = PipelinePlan("x", (*PipelinePlan.sequential().ops, OpInstance("o_allreduce", 0.0, 0.5)))
    with pytest.raises(EngineConfigError, match="o_allreduce' instances end at 0.5"):
        half.validate()


@pytest.mark.parametrize("kw", [dict(issue_order="pipelined"), dict(attention_stream=False),
                                dict(edges=[0.0, 0.3, 0.7, 1.0], issue_order="pipelined")])
def test_the_one_builder_places_collectives_on_their_own_stream_in_every_order(kw):
    n = len(kw.get("edges", [0, 0, 0, 0])) - 1
    plan = nano_batch_plan(n, collective_stream=True, **kw)
    plan.validate()
    coll = plan.num_streams - 1  # the last stream, after attention's (if any)
    assert coll == (2 if kw.get("attention_stream", True) else 1) and len(plan.stream_priorities) == plan.num_streams
    assert plan.with_collectives() == plan  # every collective placed: nothing left implied
    for op, src in COLLECTIVE_OPS.items():
        placed = [i for i in plan.ops if i.op == op]
        assert {i.stream for i in placed} == {coll}
        assert [(i.lo, i.hi) for i in placed] == [(i.lo, i.hi) for i in plan.ops if i.op == src]
        for inst in placed:  # each all-reduce is issued after its GEMM's rows
            k = plan.ops.index(inst)
            assert any(o.op == src and o.lo == inst.lo for o in plan.ops[:k])
    assert plan.name.endswith("-ar")


def test_the_one_builder_keeps_the_nano_batch_cap():
    with pytest.raises(EngineConfigError, match=f"1..{MAX_NANO_BATCHES}"):
        nano_batch_plan(MAX_NANO_BATCHES + 1)
    with pytest.raises(EngineConfigError, match=f"1..{MAX_NANO_BATCHES}"):
        resolve_plan(f"nb{MAX_NANO_BATCHES + 1}")


def test_sizing():
    m = get_preset("llama-3-70b")
    s = shard_shapes(m, 8, rank=5)
    assert (s.heads, s.kv_heads, s.intermediate, s.kv_head_lo) == (8, 1, 3584, 5)
    assert shard_shapes(m, 16, rank=5).kv_head_lo == 2  # 8 KV heads over 16 ranks: two ranks per head
    assert abs(shard_shapes(m, 1).params_per_gpu - m.num_params) <= m.hidden_size  # same count, one formula
    assert default_max_model_len(m) == 8192 and default_max_model_len(get_preset("llama-2-70b")) == 4096
    with pytest.raises(EngineConfigError, match="do not divide over tp 3"):
        check_tp(m, 3)
    h200 = 139.8 * (1 << 30)
    assert min_tp_that_fits(get_preset("llama-3-8b"), h200, min_kv_tokens=4096) == 1
    assert min_tp_that_fits(m, h200, min_kv_tokens=4096) == 2
    assert min_tp_that_fits(m, 24 * (1 << 30), min_kv_tokens=4096) == 8
