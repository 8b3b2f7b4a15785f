"""PipelinePlan: validation with one-line errors, JSON round trip, dependency derivation."""

import json

import pytest

from engine.errors import EngineConfigError
from engine.plan import LAYER_OPS, OpInstance, PipelinePlan


def two_nano_batches() -> PipelinePlan:
    """GEMMs and norms on stream 0 in two halves; attention of each half on stream 1."""
    ops = []
    for lo, hi in ((0.0, 0.5), (0.5, 1.0)):
        ops += [OpInstance("attn_norm", lo, hi), OpInstance("qkv", lo, hi), OpInstance("rope_kv", lo, hi),
                OpInstance("decode_attn", lo, hi, stream=1, sm_budget=40),
                OpInstance("prefill_attn", lo, hi, stream=1)]
    for lo, hi in ((0.0, 0.5), (0.5, 1.0)):
        ops += [OpInstance(o, lo, hi) for o in ("o_proj", "mlp_norm", "gate_up", "silu_mul", "down")]
    return PipelinePlan("two", tuple(ops), num_streams=2, align=8)


def test_sequential_plan_is_valid_and_has_every_op_once():
    p = PipelinePlan.sequential()
    p.validate()
    assert [i.op for i in p.ops] == list(LAYER_OPS)
    assert p.num_nano_batches == 1


def test_two_nano_batch_plan_valid_roundtrips_and_derives_deps(tmp_path):
    p = two_nano_batches()
    p.validate(num_sms=132)
    f = tmp_path / "p.json"
    p.save(f)
    q = PipelinePlan.load(f)
    assert q == p
    idx = {(i.op, i.lo): k for k, i in enumerate(p.ops)}
    # o_proj of the first half reads only the first half's attention
    deps = {p.ops[j].op + str(p.ops[j].lo) for j in p.producers(idx[("o_proj", 0.0)])}
    assert deps == {"decode_attn0.0", "prefill_attn0.0"}
    # prefill attention of the second half reads the KV of the first half too (prefix rule)
    deps = {p.ops[j].lo for j in p.producers(idx[("prefill_attn", 0.5)])}
    assert deps == {0.0, 0.5}
    assert p.rows(p.ops[0], 100) == (0, 48)  # 50 rounded to the alignment of 8


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["ops"].pop(1), "op 'qkv' instances leave a gap at 0.0"),
    (lambda d: d.update(ops=[o for o in d["ops"] if o["op"] != "down"]), "op 'down' has no instance"),
    (lambda d: d["ops"][0].update(hi=0.4), "gap at 0.4"),
    (lambda d: d["ops"][5].update(lo=0.4), "overlap"),
    (lambda d: d["ops"][3].update(stream=5), "stream 5 not in 0..1"),
    (lambda d: d["ops"][3].update(sm_budget=500), "sm_budget 500"),
    (lambda d: d["ops"][0].update(op="softmax"), "unknown op"),
    (lambda d: d["ops"][0].update(colour="red"), "unknown field 'colour'"),
    (lambda d: d["ops"].insert(0, d["ops"].pop(1)), "issued before"),
    (lambda d: d.update(partition="mps"), "partition 'mps' is not one of grid, cublas, green"),
    (lambda d: d.update(partition="green", stream_sms=[100]), "stream_sms has 1 entries for 2 streams"),
    (lambda d: d.update(stream_sms=[88, 44]), "stream_sms needs partition 'green'"),
    (lambda d: d.update(partition="green", stream_sms=[88, 400]), r"stream_sms\[1\] = 400"),
    (lambda d: d.update(stream_sms=["many", 4]), "invalid literal"),
])
def test_invalid_plans_fail_with_one_line_naming_the_problem(tmp_path, mutate, message):
    d = two_nano_batches().to_dict()
    mutate(d)
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(d))
    with pytest.raises(EngineConfigError, match=message) as e:
        PipelinePlan.load(f).validate(num_sms=132, where=str(f))
    assert "\n" not in str(e.value) and "bad.json" in str(e.value)


def test_malformed_json_names_file_and_line(tmp_path):
    f = tmp_path / "p.json"
    f.write_text('{"ops": [\n{"op": "qkv",}\n]}')
    with pytest.raises(EngineConfigError, match=r"p.json:2: invalid JSON"):
        PipelinePlan.load(f)


def test_partition_fields_roundtrip_and_plan_names(tmp_path):
    from engine.plan_library import plan_from_name

    for name, partition, sms in [("nb2-cublas-sm33", "cublas", ()), ("nb3-green-sm44", "green", (88, 44)),
                                 ("nb2-sm44-prio", "grid", ()), ("nb2-sm44-pf0-rev", "grid", ())]:
        p = plan_from_name(name, 132)
        p.validate(num_sms=132)
        assert (p.name, p.partition, p.stream_sms, p.num_nano_batches) == (name, partition, sms, int(name[2]))
        f = tmp_path / f"{name}.json"
        p.save(f)
        assert PipelinePlan.load(f) == p
    cublas = plan_from_name("nb2-cublas-sm33", 132)
    # GEMMs aim at the SMs attention leaves; decode attention's grid is bounded; norms stay unconfined
    assert {i.sm_budget for i in cublas.ops if i.op in ("qkv", "o_proj", "gate_up", "down")} == {99}
    assert {i.sm_budget for i in cublas.ops if i.op == "decode_attn"} == {33}
    assert {i.sm_budget for i in cublas.ops if i.op in ("attn_norm", "silu_mul")} == {None}
    assert plan_from_name("nb2-sm44-prio", 132).stream_priorities == (0, -1)
    mixed = plan_from_name("nb2-pf0-rev", 132)  # prefill attention with the GEMMs; nano-batch 1's MLP first
    assert {i.stream for i in mixed.ops if i.op == "prefill_attn"} == {0}
    assert [i.lo for i in mixed.ops if i.op == "o_proj"] == [0.5, 0.0]
    for bad, msg in [("nb2-cublas", "needs -sm"), ("two", "expected 'sequential'"), ("nb2-sm132", "1..131")]:
        with pytest.raises(EngineConfigError, match=msg):
            plan_from_name(bad, 132)
