"""`nanotune bench --endpoint` against `nanotune serve` (tiny models, CPU): the same token counts as the
in-process bench, chat with text prompts, failures that exit non-zero with their reasons, efficiency from a
reference profile, vLLM's result keys."""

import json

import pytest
from click.testing import CliRunner

from nanotune.cli import main
from nanotune.serve.run import BackgroundServer, ServeOptions, build_server
from nanotune.serve.testing import save_tiny_chat_checkpoint

TRACE = ["--trace", "constant", "-n", "6", "--input-len", "24", "--output-len", "9", "--num-warmups", "1",
         "--no-progress"]


@pytest.fixture(scope="module")
def server():
    with BackgroundServer(build_server(ServeOptions(model="tiny-llama", device="cpu", dtype="float32"))) as bg:
        yield bg


def run(args, tmp_path, code=0):
    res = CliRunner().invoke(main, ["bench", *args, "--results-dir", str(tmp_path)])
    assert res.exit_code == code, res.output
    dirs = sorted(tmp_path.iterdir()) if tmp_path.exists() else []
    result = json.loads((dirs[-1] / "result.json").read_text()) if dirs else None
    return result, " ".join(res.output.split())


def test_endpoint_matches_the_in_process_token_counts(server, tmp_path):
    ours, out = run([*TRACE, "--endpoint", server.url], tmp_path / "http")
    local, _ = run([*TRACE, "--model", "tiny-llama", "--device", "cpu"], tmp_path / "local")
    for key in ("completed", "total_input_tokens", "total_output_tokens"):
        assert ours["metrics"][key] == local["metrics"][key], key
    assert ours["metrics"]["completed"] == 6 and ours["metrics"]["num_short"] == 0
    assert ours["metrics"]["total_output_tokens"] == 6 * 9 and ours["engine"]["model"] == "tiny-llama"
    assert ours["output_lens"] == [9] * 6 and ours["input_lens"] == [24] * 6  # vLLM's keys, top level
    assert ours["backend"] == "openai" and ours["model_id"] == "tiny-llama" and ours["errors"] == [""] * 6
    assert "no efficiency: the endpoint's GPU is not on this machine" in out


def test_chat_with_text_prompts_and_vllm_export(tmp_path):
    ckpt = save_tiny_chat_checkpoint(tmp_path / "ckpt")
    srv = build_server(ServeOptions(model=str(ckpt), device="cpu", dtype="float32"))
    with BackgroundServer(srv) as bg:
        vllm = tmp_path / "vllm.json"
        result, _ = run([*TRACE, "--endpoint", bg.url + "/v1/chat/completions", "--endpoint-type", "chat",
                         "--tokenizer", str(ckpt), "--vllm-json", str(vllm)], tmp_path / "runs")
    m = result["metrics"]
    assert m["completed"] == 6 and m["total_output_tokens"] == 6 * 9 and m["num_short"] == 0
    assert result["engine"]["endpoint_type"] == "chat" and result["engine"]["prompts"] == "text"
    # the server's usage.prompt_tokens (the chat template adds tokens) is what counts
    assert all(n > 24 for n in result["input_lens"])
    v = json.loads(vllm.read_text())
    assert v["backend"] == "openai-chat" and v["request_rate"] == "inf" and v["num_prompts"] == 6
    assert [len(x) for x in v["itls"]] == [8] * 6 and all(len(t.split()) == 9 for t in v["generated_texts"])
    for key in ("mean_ttft_ms", "median_tpot_ms", "p99_itl_ms", "std_e2el_ms", "total_token_throughput",
                "duration", "ttfts", "date", "tokenizer_id", "burstiness", "max_concurrency"):
        assert key in v, key


def test_every_request_failing_exits_1_with_reasons(server, tmp_path):
    too_long = ["--trace", "constant", "-n", "3", "--input-len", "4090", "--output-len", "20", "--no-progress",
                "--endpoint", server.url]
    _, out = run([*too_long, "--num-warmups", "0"], tmp_path / "a", code=1)
    assert "every request failed" in out and "3x HTTP 400" in out and "context" in out
    result, out = run([*too_long, "--num-warmups", "2"], tmp_path / "b", code=1)
    assert "every warm-up request failed (2/2)" in out and "2x HTTP 400" in out
    assert result["metrics"]["completed"] == 0 and not result["points"]  # stopped before the measured run


def test_efficiency_from_a_reference_profile(server, tmp_path):
    result, out = run([*TRACE, "--endpoint", server.url, "--gpu", "h200"], tmp_path / "a")
    assert result["peak"]["source"] == "reference" and "profile-" in result["peak"]["label"]
    assert result["metrics"]["efficiency"] is not None and "efficiency against reference profile" in \
        result["efficiency_note"]
    _, out = run([*TRACE, "--endpoint", server.url, "--gpu", "nosuchgpu"], tmp_path / "b", code=2)
    assert "no reference profile" in out and "h200" in out
