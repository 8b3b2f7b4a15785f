"""`nanotune trace` through click's CliRunner: the acceptance command, conversion, --stats, user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from nanotune.cli import main
from workloads import load_jsonl, read_trace, trace_stats

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "shared" / "traces"
needs_reference = pytest.mark.skipif(
    not REFERENCE_DIR.is_dir(), reason=f"reference traces not found at {REFERENCE_DIR}"
)
AZURE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:48.0000000,2,109
2023-11-16 18:15:50.9951690,1030,434
2023-11-16 18:16:00.0000000,197,183
"""


def run(*args: str):
    return CliRunner().invoke(main, ["trace", *args])


def stats_json(*args: str) -> dict:
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@needs_reference
@pytest.mark.parametrize("name", ["sharegpt", "lmsys", "splitwise"])
def test_acceptance_command_within_5_percent_of_reference(name):
    # --filter none: the datasets' default filters (sharegpt: vLLM's request set) would cut the raw tails
    got = stats_json("--dataset", name, "--filter", "none", "-n", "10000", "--seed", "1", "--stats")
    want = trace_stats(read_trace(REFERENCE_DIR / f"{name}.csv"))
    assert got["count"] == 10_000
    for side in ("prompt_len", "output_len"):
        for key in ("mean", "p50", "p90", "p99"):
            target = getattr(getattr(want, side), key)
            assert abs(got[side][key] - target) <= max(0.05 * target, 2), (side, key, got[side][key], target)

    table = run("--dataset", name, "--filter", "none", "-n", "10000", "--seed", "1", "--stats")
    assert table.exit_code == 0, table.output
    assert "prompt_len" in table.stdout and "output_len" in table.stdout
    assert f"{name}.csv" in table.stdout  # the embedded reference figures are shown beside the draw


def test_stats_json_has_exactly_the_documented_keys(tmp_path):
    path = tmp_path / "conv.csv"
    path.write_text(AZURE)
    got = stats_json("--stats", str(path), "--reference", str(path))
    assert set(got) == {"count", "prompt_len", "output_len", "rate", "cv", "ks"}
    assert set(got["prompt_len"]) == {"mean", "p50", "p90", "p99", "max"}
    assert got["count"] == 4 and got["prompt_len"]["max"] == 1030
    assert got["rate"] == pytest.approx(3 / 13.3194, rel=1e-4)
    assert got["ks"] == {"prompt_len": 0.0, "output_len": 0.0}
    offline = stats_json("--dataset", "constant", "-n", "10", "--stats")
    assert offline["rate"] is None and offline["cv"] is None and offline["ks"] is None


def test_write_then_read_back_with_arrivals(tmp_path):
    out = tmp_path / "traces" / "sg.jsonl"
    result = run(
        "--dataset",
        "sharegpt",
        "-n",
        "4000",
        "--seed",
        "3",
        "--rate",
        "5",
        "--burstiness",
        "0.5",
        "-o",
        str(out),
    )
    assert result.exit_code == 0, result.output
    assert f"wrote 4,000 requests to {out}" in " ".join(result.stdout.split())
    trace = load_jsonl(out)
    assert trace.meta["generator"] == "sharegpt" and trace.meta["seed"] == 3
    assert trace.meta["arrivals"] == {"mode": "gamma", "rate": 5.0, "burstiness": 0.5, "seed": 3}
    got = stats_json("--stats", str(out))
    assert got["count"] == 4000
    assert got["rate"] == pytest.approx(5.0, rel=0.06) and got["cv"] == pytest.approx(2**0.5, rel=0.06)


def test_reference_by_dataset_name_gives_ks(tmp_path):
    out = tmp_path / "lm.jsonl"
    assert run("--dataset", "lmsys", "-n", "5000", "--seed", "2", "-o", str(out)).exit_code == 0
    near = stats_json("--stats", str(out), "--reference", "lmsys")["ks"]
    far = stats_json("--stats", str(out), "--reference", "splitwise")["ks"]
    assert near["prompt_len"] < 0.02 and near["output_len"] < 0.02
    assert far["prompt_len"] > 0.3  # lmsys prompts are far shorter than Splitwise's


def test_convert_real_file_with_filter_and_time_scale(tmp_path):
    src, out = tmp_path / "conv.csv", tmp_path / "out.jsonl"
    src.write_text(AZURE)
    result = run("--from", str(src), "--filter", "vllm", "--time-scale", "2", "-o", str(out))
    assert result.exit_code == 0, result.output
    trace = load_jsonl(out)
    assert trace.prompt_lens.tolist() == [374, 197]  # prompts of 2 (< 4) and 1030 (> 1024) tokens dropped
    assert trace.meta["filter"] == {"spec": "vllm", "dropped": 2, "truncated": 0}
    assert trace.meta["format"] == "azure" and trace.meta["arrivals"] == {"mode": "replay", "scale": 2.0}
    assert trace.arrivals.tolist() == pytest.approx([0.0, 26.63882])
    first = run("--from", str(src), "-n", "2", "--offline", "-o", str(out))
    assert first.exit_code == 0 and load_jsonl(out).meta["first_n"] == 2 and not load_jsonl(out).is_timed


def test_random_generator_options(tmp_path):
    out = tmp_path / "r.jsonl"
    args = ["--dataset", "random", "-n", "3000", "--input-len", "100", "--output-len", "40"]
    assert run(*args, "--range-ratio", "0.5", "--range-style", "sglang", "-o", str(out)).exit_code == 0
    trace = load_jsonl(out)
    assert trace.prompt_lens.min() == 50 and trace.prompt_lens.max() == 100
    assert trace.meta["params"] == {
        "input_len": 100,
        "output_len": 40,
        "range_ratio": 0.5,
        "range_style": "sglang",
    }


def test_plot_writes_png(tmp_path):
    png = tmp_path / "hist.png"
    result = run(
        "--dataset", "splitwise", "-n", "500", "--stats", "--reference", "splitwise", "--plot", str(png)
    )
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_stdout_stays_parseable_when_writing(tmp_path):
    result = run("--dataset", "constant", "-n", "5", "-o", str(tmp_path / "c.jsonl"), "--stats", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["count"] == 5 and "wrote" in result.stderr


def bad_files(tmp: Path) -> dict[str, Path]:
    files = {
        "negative.jsonl": '{"meta": {}}\n{"arrival_s": 0, "prompt_len": 3, "output_len": 4}\n'
        '{"arrival_s": 0, "prompt_len": -3, "output_len": 4}\n',
        "truncated.json": '[{"id": "a", "conversations": [{"from": "human", "value": "hi"}',
        "empty.csv": "",
        "odd.csv": "when,what\n1,2\n",
        "text.csv": AZURE.replace("1030,434", "1030,many"),
    }
    for name, text in files.items():
        (tmp / name).write_text(text)
    return {name: tmp / name for name in files}


USER_ERRORS = [
    (
        ["--stats", "{negative.jsonl}"],
        "{negative.jsonl}:3: field 'prompt_len': expected a non-negative integer, got -3",
    ),
    (["--stats", "{truncated.json}"], "{truncated.json}:1: truncated JSON"),
    (["--stats", "{empty.csv}"], "{empty.csv}: empty file"),
    (["--from", "{odd.csv}", "-o", "x.jsonl"], "{odd.csv}:1: unknown format"),
    (
        ["--stats", "{text.csv}"],
        "{text.csv}:4: field 'GeneratedTokens': expected a non-negative integer, got 'many'",
    ),
    (["--stats", "{text.csv}", "--format", "parquet"], "unknown trace format 'parquet'"),
    (["--stats", "nowhere.jsonl"], "nowhere.jsonl: no such file"),
    (["--dataset", "alpaca", "--stats"], "unknown dataset 'alpaca'"),
    (["--dataset", "sharegpt", "--filter", "max-len:0", "--stats"], "bad filter 'max-len:0'"),
    (["--dataset", "sharegpt", "-n", "many", "--stats"], "'many' is not a valid integer"),
    (["--dataset", "sharegpt"], "nothing to do"),
    (["--stats"], "give exactly one source"),
    (["--dataset", "lmsys", "--from", "{text.csv}", "--stats"], "give exactly one source"),
    (["--dataset", "lmsys", "--json", "-o", "x.jsonl"], "--json goes with --stats"),
    (["--dataset", "lmsys", "--input-len", "5", "--stats"], "dataset 'lmsys' does not take input_len"),
    (["--dataset", "lmsys", "--tokenizer", ".", "--stats"], "--tokenizer applies to files"),
    (["--dataset", "lmsys", "--rate", "measured", "--stats"], "no real timestamps to measure"),
    (["--dataset", "lmsys", "--rate", "2", "--offline", "--stats"], "are alternatives"),
    (["--dataset", "lmsys", "--stats", "--reference", "nowhere"], "--reference nowhere: no such file"),
]


@pytest.mark.parametrize(("args", "expected"), USER_ERRORS, ids=[" ".join(a) for a, _ in USER_ERRORS])
def test_user_errors_exit_2_with_one_error_and_no_traceback(tmp_path, monkeypatch, args, expected):
    monkeypatch.chdir(tmp_path)
    files = bad_files(tmp_path)
    fill = {f"{{{name}}}": str(path) for name, path in files.items()}
    for key, value in fill.items():
        args = [a.replace(key, value) for a in args]
        expected = expected.replace(key, value)
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("error:") == 1
    # rich wraps long lines at the console width; the message itself is one line
    assert expected in " ".join(result.stderr.split()), result.stderr


def test_help_documents_both_range_conventions():
    result = run("--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "[L(1-r), L(1+r)]" in text and "[L*r, L]" in text


def test_stats_of_burstgpt_says_how_many_failed_rows_were_dropped(tmp_path):
    path = tmp_path / "burst.csv"
    path.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                    "5,ChatGPT,472,18,490,Conversation log\n45,ChatGPT,1087,0,1087,Conversation log\n"
                    "118,GPT-4,417,276,693,API log\n")
    result = run("--stats", str(path))
    assert result.exit_code == 0, result.output
    out = " ".join(result.stdout.split())
    assert "count 2" in out and "failed requests (0 response tokens) dropped: 1" in out
