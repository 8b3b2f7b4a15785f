"""The profile file (nanotune.profile/1): a round trip, and one-line errors naming file and field."""

import copy
import json

import pytest

from nanotune.errors import UserError
from nanotune.profile import SCHEMA, load_profile, validate_profile
from nanotune.profile.testing import synthetic_profile
from nanotune.results import write_json_atomic


@pytest.fixture(scope="module")
def profile():
    return synthetic_profile("llama-3-8b", quick=True)


def test_synthetic_profile_is_valid_and_round_trips(profile, tmp_path):
    validate_profile(profile)
    assert profile["schema"] == SCHEMA == "nanotune.profile/1"
    path = write_json_atomic(tmp_path / "profile.json", profile)
    loaded = load_profile(path)
    assert loaded == json.loads(json.dumps(profile))
    assert load_profile(tmp_path) == loaded  # a run directory works too
    dec = loaded["ops"]["decode_attn"]["points"]
    assert {"batch", "context", "sm_budget", "ms"} <= set(dec[0])
    assert any(p["sm_budget"] is None for p in dec) and any(p["sm_budget"] for p in dec)
    assert {"tokens", "context", "seqs"} <= set(loaded["ops"]["prefill_attn"]["points"][0])
    pair = loaded["interference"][0]
    assert pair["a"] in ("qkv", "o_proj", "gate_up", "down") and pair["together_ms"] > 0


def test_70b_shard_profile_is_valid():
    p = synthetic_profile("llama-2-70b", tp=8, quick=True)
    validate_profile(p)
    assert p["shapes"]["heads"] == 8 and p["collectives"]["all_reduce"]["measured"] is False


def _error(tmp_path, data, name="p.json") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    with pytest.raises(UserError) as e:
        load_profile(path)
    msg = e.value.format_message()
    assert "\n" not in msg and str(path) in msg
    return msg


def _broken(profile, edit):
    p = copy.deepcopy(profile)
    edit(p)
    return p


@pytest.mark.parametrize("edit, expected", [
    (lambda p: p.update(schema="nanotune.profile/0"), "field 'schema': expected 'nanotune.profile/1'"),
    (lambda p: p.pop("peaks"), "missing field 'peaks'"),
    (lambda p: p.update(tp=0), "field 'tp': expected an integer >= 1"),
    (lambda p: p.update(tp=True), "field 'tp': expected an integer, got true"),
    (lambda p: p["shapes"].pop("kv_heads"), "missing field 'shapes.kv_heads'"),
    (lambda p: p["peaks"].update(copy_gb_s=-1), "field 'peaks.copy_gb_s': expected a positive number"),
    (lambda p: p["ops"]["qkv"]["points"][1].update(ms="fast"),
     "field 'ops.qkv.points[1].ms': expected a number, got \"fast\""),
    (lambda p: p["ops"]["decode_attn"]["points"][0].pop("context"),
     "missing field 'ops.decode_attn.points[0].context'"),
    (lambda p: p["ops"]["decode_attn"]["points"][0].update(sm_budget=0),
     "field 'ops.decode_attn.points[0].sm_budget': expected a positive integer or null"),
    (lambda p: p["ops"].update(lm_head={"kind": "gemm", "points": []}), "field 'ops.lm_head': unknown op"),
    (lambda p: p["ops"]["down"].update(kind="compute"), "field 'ops.down.kind': expected one of gemm, attention"),
    (lambda p: p["interference"][2].pop("slowdown_b"), "missing field 'interference[2].slowdown_b'"),
    (lambda p: p["interference"][0].update(b="attention"), "field 'interference[0].b': unknown op"),
    (lambda p: p.update(throttled=None), "field 'throttled': expected true/false, got null"),
    (lambda p: p.update(notes=["ok", 3]), "field 'notes': expected a list of strings"),
])
def test_malformed_profiles_give_one_line(profile, tmp_path, edit, expected):
    assert expected in _error(tmp_path, _broken(profile, edit))


def test_unreadable_files(tmp_path):
    assert "no such profile file" in _error_missing(tmp_path / "nope.json")
    assert "p.json:2: not valid JSON" in _error(tmp_path, '{\n  "schema": }')
    assert "expected a JSON object at the top level" in _error(tmp_path, "[1, 2]")


def _error_missing(path) -> str:
    with pytest.raises(UserError) as e:
        load_profile(path)
    return e.value.format_message()
