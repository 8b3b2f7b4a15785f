"""Readers for the formats users bring, on small real-shaped files and on malformed ones; filters' counts.

Every malformed file must give one TraceError line naming the file, the (1-based) line and the field.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from workloads import (
    Trace,
    TraceError,
    TraceRequest,
    apply_filter,
    detect_format,
    load_jsonl,
    parse_filter,
    read_trace,
    save_jsonl,
)
from workloads.tokens import approx_tokens

SHAREGPT = [
    {
        "id": "QWJhYvA_0",
        "conversations": [
            {"from": "human", "value": "Summarize the plot of Hamlet in two sentences."},
            {"from": "gpt", "value": "A prince seeks revenge for his father's murder. Nearly everyone dies."},
            {"from": "human", "value": "Shorter?"},
            {"from": "gpt", "value": "Revenge; everyone dies."},
        ],
    },
    {"id": "empty_1", "conversations": []},
    {
        "id": "sys_2",
        "conversations": [
            {"from": "system", "value": "You are terse."},
            {"from": "human", "value": "hi"},
            {"from": "chatgpt", "value": "Hello there, how can I help?"},
        ],
    },
    {"id": "unanswered_3", "conversations": [{"from": "human", "value": "anyone?"}]},
]

LMSYS = [
    {
        "conversation_id": "c1",
        "model": "vicuna-13b",
        "conversation": [
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris."},
        ],
        "turn": 1,
        "language": "English",
    },
    {
        "conversation_id": "c2",
        "model": "koala-13b",
        "conversation": [
            {"role": "user", "content": "Write a haiku about GPUs."},
            {
                "role": "assistant",
                "content": "Silicon rivers / ten thousand cores hum as one / tokens flow like rain",
            },
        ],
        "turn": 1,
        "language": "English",
    },
]

AZURE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,396,109
2023-11-16 18:15:50.9951690,1030,434
2023-11-16 18:16:00.0000000,197,183
"""

BURSTGPT = """Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type
5,ChatGPT,472,18,490,Conversation log
45,ChatGPT,1087,0,1087,Conversation log
118,GPT-4,417,276,693,API log
"""

MOONCAKE = """{"timestamp": 0, "input_length": 6755, "output_length": 500, "hash_ids": [0, 1, 2, 3, 4]}
{"timestamp": 0, "input_length": 7319, "output_length": 490, "hash_ids": [0, 5, 6]}
{"timestamp": 3052, "input_length": 7234, "output_length": 794, "hash_ids": [0, 7]}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_sharegpt_turns_0_and_1_whoever_speaks(tmp_path):
    """vLLM's rule: turn [0] is the prompt, turn [1] the output, even when [0] is a system turn."""
    path = write(tmp_path, "sg.json", json.dumps(SHAREGPT, indent=2))  # pretty-printed, as the dumps are
    trace = read_trace(path)
    assert trace.meta["format"] == "sharegpt" and trace.meta["num_skipped"] == 2  # empty and one-turn
    first, second = SHAREGPT[0]["conversations"], SHAREGPT[2]["conversations"]
    assert trace.prompt_lens.tolist() == [approx_tokens(first[0]["value"]), approx_tokens(second[0]["value"])]
    assert trace.output_lens.tolist() == [approx_tokens(first[1]["value"]), approx_tokens(second[1]["value"])]
    assert not trace.is_timed and trace.requests[0].prompt_ids is None
    assert "ceil(characters / 4)" in trace.meta["tokens"]


def test_approximation_is_four_characters_per_token():
    assert [approx_tokens(t) for t in ("", "a", "abcd", "abcde", "x" * 400)] == [0, 1, 1, 2, 100]


@pytest.mark.parametrize("layout", ["json", "jsonl"])
def test_lmsys_json_and_jsonl(tmp_path, layout):
    text = json.dumps(LMSYS) if layout == "json" else "\n".join(json.dumps(r) for r in LMSYS) + "\n"
    trace = read_trace(write(tmp_path, f"lmsys.{layout}", text))
    assert trace.meta["format"] == "lmsys" and len(trace) == 2
    assert trace.output_lens.tolist() == [
        approx_tokens("Paris."),
        approx_tokens(LMSYS[1]["conversation"][1]["content"]),
    ]


def test_azure_csv_keeps_timestamps_relative_to_first(tmp_path):
    trace = read_trace(write(tmp_path, "conv.csv", AZURE))
    assert trace.meta["format"] == "azure"
    assert trace.prompt_lens.tolist() == [374, 396, 1030, 197]
    assert trace.arrivals.tolist() == pytest.approx([0.0, 4.314579, 4.314579, 13.31941])


def test_azure_xxx_timestamps_mean_offline(tmp_path):
    trace = read_trace(
        write(tmp_path, "lens.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\nXXX,42,285\nXXX,19,82\n")
    )
    assert not trace.is_timed and trace.output_lens.tolist() == [285, 82]


def test_burstgpt_csv_drops_failed_rows(tmp_path):
    trace = read_trace(write(tmp_path, "burst.csv", BURSTGPT))
    assert trace.meta["format"] == "burstgpt" and trace.meta["num_failed"] == 1
    # the failed row (0 response tokens) is dropped, as vLLM's BurstGPT reader drops it
    assert trace.arrivals.tolist() == [0.0, 113.0]
    assert trace.prompt_lens.tolist() == [472, 417] and trace.output_lens.tolist() == [18, 276]
    only_failed = BURSTGPT.splitlines()[0] + "\n45,ChatGPT,1087,0,1087,Conversation log\n"
    with pytest.raises(TraceError, match="all 1 rows are failed requests"):
        read_trace(write(tmp_path, "failed.csv", only_failed))


def test_mooncake_jsonl_timestamps_in_ms(tmp_path):
    trace = read_trace(write(tmp_path, "mc.jsonl", MOONCAKE))
    assert trace.meta["format"] == "mooncake"
    assert trace.arrivals.tolist() == [0.0, 0.0, 3.052]
    assert trace.prompt_lens.tolist() == [6755, 7319, 7234] and trace.output_lens.tolist() == [500, 490, 794]


def test_our_jsonl_round_trip(tmp_path):
    trace = Trace(
        [TraceRequest(0.0, 3, 5, (1, 2, 3)), TraceRequest(0.25, 7, 1)],
        {"source": "unit", "seed": 3, "filter": {"spec": "none", "dropped": 0, "truncated": 0}},
    )
    path = save_jsonl(trace, tmp_path / "sub" / "t.jsonl")
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["meta"]["count"] == 2
    assert json.loads(lines[1]) == {
        "arrival_s": 0.0,
        "prompt_len": 3,
        "output_len": 5,
        "prompt_ids": [1, 2, 3],
    }
    assert "prompt_ids" not in json.loads(lines[2])
    back = load_jsonl(path)
    assert back.requests == trace.requests and back.meta["seed"] == 3
    assert read_trace(path).requests == trace.requests
    assert not list(path.parent.glob(".*tmp"))  # the atomic write left no temp file behind


def test_detection_ignores_extension_and_explicit_format_wins(tmp_path):
    path = write(tmp_path, "trace.txt", AZURE)
    assert detect_format(path, AZURE) == "azure"
    assert read_trace(path, "splitwise").meta["format"] == "azure"  # alias
    with pytest.raises(TraceError, match="unknown trace format 'parquet'"):
        read_trace(path, "parquet")


def test_hf_tokenizer_gives_exact_counts_and_prompt_ids(tmp_path):
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<s>": 1, "hi": 2, "hello": 3, "there": 4, "world": 5}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", bos_token="<s>").save_pretrained(
        tmp_path / "tok"
    )
    data = [
        {
            "id": "a",
            "conversations": [
                {"from": "human", "value": "hello world hi"},
                {"from": "gpt", "value": "hi there"},
            ],
        }
    ]
    trace = read_trace(write(tmp_path, "sg.json", json.dumps(data)), tokenizer=tmp_path / "tok")
    request = trace.requests[0]
    assert request.prompt_ids[-3:] == (3, 5, 2) and request.prompt_len == len(request.prompt_ids)
    assert request.output_len == 2
    assert trace.meta["tokens"].startswith("huggingface:")
    with pytest.raises(TraceError, match="tokenizer folder not found"):
        read_trace(tmp_path / "sg.json", tokenizer=tmp_path / "nope")


NL = "\n"
CUT_SHAREGPT = json.dumps(SHAREGPT, indent=2)[:700]  # a download cut inside the first conversation
MALFORMED = [
    # (file name, content, expected message after "<path>")
    ("empty.jsonl", "", ": empty file"),
    ("blank.csv", "\n\n", ": empty file"),
    (
        "trunc.json",
        CUT_SHAREGPT,
        f":{CUT_SHAREGPT.count(NL) + 1}: truncated JSON",  # reported on the last line, where it ends
    ),
    (
        "trunc_line.jsonl",
        '{"meta": {}}\n{"arrival_s": 0, "prompt_len": 3, "output_len": 4}\n{"arrival_s": 0, "pro',
        ":3: truncated JSON line",
    ),
    (
        "neg.jsonl",
        '{"meta": {}}\n{"arrival_s": 0, "prompt_len": 3, "output_len": 4}\n'
        '{"arrival_s": 0, "prompt_len": -3, "output_len": 4}\n',
        ":3: field 'prompt_len': expected a non-negative integer, got -3",
    ),
    ("missing.jsonl", '{"meta": {}}\n{"arrival_s": 0, "output_len": 4}\n', ":2: field 'prompt_len': missing"),
    (
        "ids.jsonl",
        '{"meta": {}}\n{"arrival_s": 0, "prompt_len": 2, "output_len": 4, "prompt_ids": [1]}\n',
        ":2: field 'prompt_ids': has 1 ids but prompt_len is 2",
    ),
    (
        "time.jsonl",
        '{"arrival_s": "soon", "prompt_len": 2, "output_len": 4}\n',
        ":1: field 'arrival_s': expected a non-negative number of seconds, got 'soon'",
    ),
    (
        "text.csv",
        AZURE.replace("396,109", "abc,109"),
        ":3: field 'ContextTokens': expected a non-negative integer, got 'abc'",
    ),
    (
        "float.csv",
        AZURE.replace("197,183", "197,18.5"),
        ":5: field 'GeneratedTokens': expected a non-negative integer",
    ),
    ("short.csv", AZURE + "2023-11-16 18:16:01.0,12\n", ":6: field 'GeneratedTokens': missing"),
    ("column.csv", "TIMESTAMP,ContextTokens,Generated\nXXX,1,2\n", r":1: unknown format"),
    (
        "mixed.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,1,2\nXXX,3,4\n",
        ":3: field 'TIMESTAMP': no time stamp, but line 2 has one",
    ),
    (
        "stamp.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,2\n",
        ":2: field 'TIMESTAMP': expected a non-negative number of seconds, got 'yesterday'",
    ),
    (
        "burst.csv",
        BURSTGPT.replace("118,GPT-4,417", "118,GPT-4,-417"),
        ":4: field 'Request tokens': expected a non-negative",
    ),
    ("mc.jsonl", MOONCAKE.replace('"input_length": 7234, ', ""), ":3: field 'input_length': missing"),
    (
        "sg_missing.json",
        json.dumps([SHAREGPT[0], {"id": "x"}], indent=2),
        r":\d+: field 'conversations': missing",
    ),
    (
        "sg_turn.json",
        json.dumps([{"id": "x", "conversations": [{"from": "human"}]}]),
        ":1: field 'conversations[0].value': missing",
    ),
    (
        "lm_type.jsonl",
        json.dumps(LMSYS[0]) + "\n" + json.dumps({"conversation": "hi"}) + "\n",
        ":2: field 'conversation': expected a list of turns",
    ),
    ("what.json", json.dumps([{"prompt": "x"}]), ":1: unknown format: first record has prompt"),
    ("garbage.txt", "hello world\n", ":1: unknown format: CSV header"),
]


@pytest.mark.parametrize(("name", "content", "expected"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_files_give_one_line_naming_file_line_field(tmp_path, name, content, expected):
    path = write(tmp_path, name, content)
    with pytest.raises(TraceError) as info:
        read_trace(path)
    message = str(info.value)
    assert "\n" not in message
    # expected is literal text after the path, except that ":\d+:" stands for a line computed elsewhere
    pattern = re.escape(str(path)) + re.escape(expected).replace(re.escape(r":\d+:"), r":\d+:")
    assert re.match(pattern, message), message


def test_sharegpt_error_line_points_at_the_bad_element(tmp_path):
    text = json.dumps(
        [SHAREGPT[0], SHAREGPT[2], {"id": "bad", "conversations": [{"from": "human", "value": 3}]}], indent=2
    )
    path = write(tmp_path, "sg.json", text)
    with pytest.raises(TraceError) as info:
        read_trace(path)
    starts = [i + 1 for i, line in enumerate(text.splitlines()) if line == "  {"]  # elements' opening braces
    bad_line = starts[2]
    assert str(info.value).startswith(f"{path}:{bad_line}: field 'conversations[0].value': expected a string")


def test_vllm_filter_counts(tmp_path):
    lens = [(3, 100), (100, 3), (1025, 10), (1000, 1049), (1000, 1048), (4, 4), (500, 500)]
    trace = Trace([TraceRequest(0.0, p, o) for p, o in lens], {})
    filtered = apply_filter(trace, "vllm")
    assert [(r.prompt_len, r.output_len) for r in filtered.requests] == [(1000, 1048), (4, 4), (500, 500)]
    assert filtered.meta["filter"] == {"spec": "vllm", "dropped": 4, "truncated": 0}
    assert filtered.meta["count"] == 3


def test_max_len_filter_truncates_prompts_and_drops_impossible():
    trace = Trace(
        [TraceRequest(0.0, 100, 10, tuple(range(100))), TraceRequest(0.0, 10, 10), TraceRequest(0.0, 5, 64)],
        {},
    )
    capped = apply_filter(trace, "max-len:64")
    assert [(r.prompt_len, r.output_len) for r in capped.requests] == [(54, 10), (10, 10)]
    assert capped.requests[0].prompt_ids == tuple(range(54))  # the head of the prompt is kept
    assert capped.meta["filter"] == {"spec": "max-len:64", "dropped": 1, "truncated": 1}
    again = apply_filter(capped, "vllm")
    assert again.meta["filter"]["spec"] == "max-len:64,vllm"  # successive filters are all recorded


@pytest.mark.parametrize("spec", ["max-len:", "max-len:0", "max-len:x", "vlm", "max-len:-5"])
def test_bad_filter_spec(spec):
    with pytest.raises(TraceError, match=f"bad filter '{spec}': expected none, vllm or max-len:N"):
        parse_filter(spec)
