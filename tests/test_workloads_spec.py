"""workloads.spec (the one workload parser) and workloads.runnable (requests dropped before a run)."""

from __future__ import annotations

import json

import pytest

from workloads import (
    DEFAULT_FILTERS,
    Trace,
    TraceError,
    TraceRequest,
    describe_dropped,
    drop_unrunnable,
    generate,
    parse_workload,
    save_jsonl,
)
from workloads.filters import VLLM_MAX_PROMPT_LEN, VLLM_MAX_TOTAL_LEN, VLLM_MIN_LEN
from workloads.tokens import approx_tokens


@pytest.mark.parametrize(("text", "source", "params", "label"), [
    ("sharegpt", "sharegpt", {}, "sharegpt"),
    ("constant:1024:512", "constant", {"input_len": 1024, "output_len": 512}, "constant-1024x512"),
    ("random:100:40", "random", {"input_len": 100, "output_len": 40}, "random-100x40"),
    ("random:100:40:0.5", "random", {"input_len": 100, "output_len": 40, "range_ratio": 0.5}, "random-100x40"),
])
def test_forms_parse_to_one_spec(text, source, params, label):
    spec = parse_workload(text, 10, 3)
    assert (spec.source, dict(spec.params), spec.label, spec.is_file) == (source, params, label, False)
    assert spec.text == text  # the canonical text round-trips
    assert parse_workload(spec.text, 10, 3) == spec


def test_options_and_text_agree_or_fail():
    same = parse_workload("constant", 4, input_len=64, output_len=8)
    assert same == parse_workload("constant:64:8", 4) and same.text == "constant:64:8"
    assert parse_workload("constant:64:8", 4, input_len=64) == same
    with pytest.raises(TraceError, match="sets input_len 64, the option says 32"):
        parse_workload("constant:64:8", 4, input_len=32)


@pytest.mark.parametrize(("text", "message"), [
    ("alpaca", "unknown dataset 'alpaca'"),
    ("constant:1024", "expected a dataset name"),
    ("sharegpt:1:2", "expected a dataset name"),
    ("constant:0:8", "input_len must be a positive integer"),
    ("random:10:5:wide", "range_ratio 'wide' is not a number"),
    ("", "empty workload"),
])
def test_bad_specs_are_one_line(text, message):
    with pytest.raises(TraceError, match=message):
        parse_workload(text)


def test_default_filters_are_the_datasets_and_vllm_for_sharegpt():
    assert DEFAULT_FILTERS["sharegpt"] == "vllm"
    got = parse_workload("sharegpt", 500, 7).load()
    assert got.meta["filter"]["spec"] == "vllm" and len(got) == 500
    # the same draws as the generator told the filter by hand: one definition, not a second reading
    want = generate("sharegpt", 500, 7, filter="vllm")
    assert got.prompt_lens.tolist() == want.prompt_lens.tolist()
    assert got.output_lens.tolist() == want.output_lens.tolist()
    p, o = got.prompt_lens, got.output_lens
    assert p.min() >= VLLM_MIN_LEN and o.min() >= VLLM_MIN_LEN and p.max() <= VLLM_MAX_PROMPT_LEN
    assert (p + o).max() <= VLLM_MAX_TOTAL_LEN
    raw = parse_workload("sharegpt", 500, 7, filter="none").load()
    assert raw.meta["filter"]["spec"] == "none" and raw.prompt_lens.mean() > p.mean()
    assert parse_workload("constant:8:4", 3).load().meta["filter"]["spec"] == "none"
    assert parse_workload("splitwise", 50).load().meta["filter"]["spec"] == "max-len:4096"


def _sharegpt_dump(tmp_path, conversations):
    path = tmp_path / "sg.json"
    path.write_text(json.dumps([{"id": str(i), "conversations": c} for i, c in enumerate(conversations)]))
    return path


def turn(who, n_chars):
    return {"from": who, "value": "x" * n_chars}


def test_sharegpt_file_is_read_as_vllm_reads_it(tmp_path):
    """Turns [0] and [1] whoever speaks, then vLLM's length rule (the file format's default filter)."""
    path = _sharegpt_dump(tmp_path, [
        [turn("human", 40), turn("gpt", 80)],  # kept: 10 in / 20 out
        [turn("system", 100), turn("human", 60), turn("gpt", 400)],  # kept as system -> human: 25 / 15
        [turn("human", 8), turn("gpt", 80)],  # prompt 2 tokens < 4: dropped
        [turn("human", 4 * 1100), turn("gpt", 80)],  # prompt 1100 > 1024: dropped
        [turn("human", 4 * 1000), turn("gpt", 4 * 1100)],  # 1000 + 1100 > 2048: dropped
        [turn("human", 40)],  # one turn: skipped by the reader
    ])
    trace = parse_workload(str(path)).load()
    assert trace.prompt_lens.tolist() == [10, 25] and trace.output_lens.tolist() == [20, 15]
    assert trace.meta["filter"] == {"spec": "vllm", "dropped": 3, "truncated": 0}
    assert trace.meta["num_skipped"] == 1 and approx_tokens("x" * 100) == 25
    everything = parse_workload(str(path), filter="none").load()
    assert len(everything) == 5
    assert len(parse_workload(str(path), num_requests=1).load()) == 1  # -n: the first N after the filter


def test_jsonl_file_keeps_its_requests_and_order(tmp_path):
    path = save_jsonl(Trace([TraceRequest(0.0, 5000, 10), TraceRequest(1.0, 3, 2)], {}), tmp_path / "t.jsonl")
    spec = parse_workload(str(path), 5, seed=9)
    trace = spec.load()
    assert spec.is_file and spec.label == "t" and trace.meta["filter"]["spec"] == "none"
    assert trace.prompt_lens.tolist() == [5000, 3] and trace.meta["workload"] == str(path)
    with pytest.raises(TraceError, match="--input-len: generator options"):
        parse_workload(str(path), input_len=5)
    with pytest.raises(TraceError, match="nowhere.jsonl: no such file"):
        parse_workload(str(tmp_path / "nowhere.jsonl")).load()


def test_unrunnable_requests_are_dropped_and_counted_by_reason():
    trace = Trace([TraceRequest(0.0, p, o) for p, o in
                   [(100, 20), (0, 20), (8000, 193), (8000, 192), (30, 0), (7, 7)]], {"source": "t"})
    kept = drop_unrunnable(trace, 8192)
    assert [(r.prompt_len, r.output_len) for r in kept.requests] == [(100, 20), (8000, 192), (7, 7)]
    record = kept.meta["unrunnable"]
    assert record == {"max_model_len": 8192,
                      "dropped": {"empty_prompt": 1, "empty_output": 1, "over_max_model_len": 1}}
    assert describe_dropped(kept.meta) == "3 (1 empty prompt, 1 no output tokens, 1 over max_model_len 8,192)"
    assert len(drop_unrunnable(trace, None)) == 4  # no context known: only the empty ones go
    assert describe_dropped(drop_unrunnable(kept, 8192).meta) == "0"
