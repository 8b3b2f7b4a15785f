"""One plan builder, plan identity by ops, the engine's default plan, and the typed tuned-config file."""

import json

import pytest

from engine import EngineConfig, LLMEngine
from engine.errors import EngineConfigError
from engine.plan import OpInstance, PipelinePlan
from engine.plan_library import default_plan, nano_batch_plan, plan_from_name
from engine.presets import get_preset
from engine.tuned import SCHEMA, TunedConfig, load_tuned
from nanotune.bench.config import BenchConfig
from nanotune.bench.session import engine_limits, tuned_model


def test_plans_hash_and_compare_by_what_runs():
    a = nano_batch_plan(2)
    b = PipelinePlan("other-name", a.ops, num_streams=2, align=64, stream_priorities=(0, 0), meta={"note": "x"})
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    for changed in (PipelinePlan(a.name, a.ops, num_streams=2, align=128, stream_priorities=(0, 0)),
                    PipelinePlan(a.name, a.ops, num_streams=2, align=64, stream_priorities=(0, -1)),
                    PipelinePlan(a.name, a.ops[::-1], num_streams=2, align=64, stream_priorities=(0, 0)),
                    plan_from_name("nb2-sm33", 132), plan_from_name("nb2-cublas-sm33", 132)):
        assert changed != a
    assert a != "nb2" and PipelinePlan.from_dict(json.loads(json.dumps(a.to_dict()))) == a


def test_library_builder_keeps_its_names_and_takes_the_space_s_shapes():
    assert plan_from_name("nb2-pf0-rev", 132).name == "nb2-pf0-rev"
    assert nano_batch_plan(3).name == "nb3" and nano_batch_plan(2, decode_sm_budget=8).name == "nb2-sm8"
    uneven = nano_batch_plan(2, edges=[0.0, 0.25, 1.0])
    assert uneven.name == "custom-nb2" and {(i.lo, i.hi) for i in uneven.ops} == {(0.0, 0.25), (0.25, 1.0)}
    one = nano_batch_plan(1, attention_stream=False, align=1)
    assert one == PipelinePlan.sequential() and one.num_streams == 1
    piped = nano_batch_plan(3, issue_order="pipelined")
    assert piped != nano_batch_plan(3) and sorted(map(repr, piped.ops)) == sorted(map(repr, nano_batch_plan(3).ops))
    piped.validate()
    with pytest.raises(EngineConfigError, match="issue order 'zigzag'"):
        nano_batch_plan(2, issue_order="zigzag")
    with pytest.raises(EngineConfigError, match="3 edges for 3 nano-batches"):
        nano_batch_plan(3, edges=[0.0, 0.5, 1.0])


def test_engine_runs_default_plan_when_none_given(monkeypatch):
    marked = PipelinePlan("marked-default", (OpInstance("attn_norm"),) + PipelinePlan.sequential().ops[1:],
                          meta={"why": "test"})
    calls = []

    def fake_default(model):
        calls.append(model.name)
        return marked

    monkeypatch.setattr("engine.plan_library.default_plan", fake_default)
    eng = LLMEngine(EngineConfig(model="tiny-llama-micro", device="cpu", dtype="float32"))
    assert calls == ["tiny-llama-micro"] and eng.runner.plan.name == "marked-default"
    named = LLMEngine(EngineConfig(model="tiny-llama-micro", device="cpu", dtype="float32", plan="nb2"))
    assert calls == ["tiny-llama-micro"] and named.runner.plan.name == "nb2"  # a given plan wins


def test_default_plan_docstring_quotes_no_measured_figures():
    import re

    doc = default_plan.__doc__
    assert not re.search(r"\d+\.\d+x|\d+(\.\d+)?\s*(tok/s|TB/s|ms\b)", doc), doc
    assert default_plan(get_preset("tiny-llama")) == PipelinePlan.sequential()


def test_tuned_config_round_trip_and_bench_reads_it(tmp_path):
    tuned = TunedConfig(nano_batch_plan(2), 1792, 1024, model="tiny-llama-micro", source={"run_id": "r1"})
    path = tuned.save(tmp_path / "tuned.json")
    d = json.loads(path.read_text())
    assert d["schema"] == SCHEMA and d["max_num_batched_tokens"] == 1792
    back = load_tuned(path)
    assert back == tuned and back.plan == nano_batch_plan(2) and back.limits() == {"max_num_batched_tokens": 1792,
                                                                                  "max_num_seqs": 1024}
    assert engine_limits(BenchConfig(plan=str(path))) == {"max_num_batched_tokens": 1792, "max_num_seqs": 1024}
    assert engine_limits(BenchConfig(plan=str(path), max_num_batched_tokens=64))["max_num_batched_tokens"] == 64
    assert tuned_model(str(path)) == "tiny-llama-micro" and tuned_model("nb2") is None
    eng = LLMEngine(EngineConfig(model="tiny-llama-micro", device="cpu", dtype="float32", plan=str(path)))
    assert eng.runner.plan == nano_batch_plan(2)  # the engine takes a tuned-config file as its plan
    plain = tmp_path / "plan.json"
    nano_batch_plan(3).save(plain)
    assert load_tuned(plain).limits() == {} and load_tuned(plain).plan == nano_batch_plan(3)


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(max_num_seqs=0), "tuned.json: field 'max_num_seqs' must be an integer >= 1"),
    (lambda d: d.update(max_num_batched_tokens="2048"), "field 'max_num_batched_tokens' must be an integer"),
    (lambda d: d.update(extra=1), "unknown field 'extra'"),
    (lambda d: d.pop("plan"), "missing field 'plan'"),
    (lambda d: d["plan"]["ops"].pop(), "tuned.json: plan: op 'down'"),
    (lambda d: d.update(tp=0), "field 'tp'"),
])
def test_bad_tuned_config_is_one_line_naming_the_field(tmp_path, edit, match):
    d = TunedConfig(PipelinePlan.sequential(), 2048, 512, model="m").to_dict()
    edit(d)
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps(d))
    with pytest.raises(EngineConfigError, match=match):
        load_tuned(path)
