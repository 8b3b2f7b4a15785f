"""`nanotune bench --kv-cache-dtype / --decode-kernel`: the real tiny engine with an fp8 cache, and the refusal
for peers."""

import json

import pytest
from click.testing import CliRunner

from nanotune.cli import main


def invoke(*args):
    return CliRunner().invoke(main, ["bench", *args])


def test_fp8_kv_cache_end_to_end(tmp_path):
    pytest.importorskip("engine.engine")
    res = invoke("--model", "tiny-llama-micro", "--device", "cpu", "-n", "6", "--max-output-len", "5",
                 "--max-prompt-len", "40", "--num-warmups", "1", "--kv-cache-dtype", "fp8",
                 "--results-dir", str(tmp_path), "--no-progress")
    assert res.exit_code == 0, res.output
    result = json.loads(next(tmp_path.iterdir()).joinpath("result.json").read_text())
    assert result["metrics"]["completed"] == 6 and result["metrics"]["failed"] == 0
    assert json.dumps(result).count('"kv_cache_dtype": "fp8"') >= 1


@pytest.mark.parametrize("args", [["--engine", "hf"], ["--endpoint", "http://localhost:1"]])
@pytest.mark.parametrize("flag,value", [("--kv-cache-dtype", "fp8"), ("--decode-kernel", "tma")])
def test_engine_options_refused_for_peers(tmp_path, args, flag, value):
    res = invoke(*args, flag, value, "--results-dir", str(tmp_path), "--no-progress", "--peak-tflops", "1")
    assert res.exit_code == 2 and flag in res.output, res.output
