"""`nanotune bench --endpoint` against a server we did not write: Hugging Face `transformers serve` (FastAPI
+ uvicorn, from the `dev` extra) on a tiny local checkpoint, on the CPU, in a subprocess.

transformers serve rejects fields it does not know (HTTP 422 for vLLM's ignore_eos / min_tokens), so the
first run shows the client reporting that and exiting 1; with --no-ignore-eos both endpoint types complete.
"""

import json
import os
import subprocess
import sys
import time

import httpx
import pytest
from click.testing import CliRunner

from nanotune.cli import main
from nanotune.serve.run import free_port
from nanotune.serve.testing import save_tiny_chat_checkpoint

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

START_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def hf_server(tmp_path_factory):
    ckpt = save_tiny_chat_checkpoint(tmp_path_factory.mktemp("hf-serve") / "ckpt")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", "import sys; from transformers.cli.transformers import main; sys.exit(main())",
           "serve", str(ckpt), "--device", "cpu", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.time() + START_TIMEOUT_S
        while time.time() < end:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited: {proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail("transformers serve did not start in time")
        yield url, ckpt
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def bench(url, ckpt, tmp_path, *extra):
    args = ["bench", "--endpoint", url, "--tokenizer", str(ckpt), "--trace", "constant", "-n", "4",
            "--input-len", "16", "--output-len", "6", "--num-warmups", "1", "--no-progress",
            "--results-dir", str(tmp_path), *extra]
    res = CliRunner().invoke(main, args)
    dirs = sorted(tmp_path.iterdir()) if tmp_path.exists() else []
    return res, (json.loads((dirs[-1] / "result.json").read_text()) if dirs else None)


def test_rejected_vllm_fields_are_reported_and_exit_nonzero(hf_server, tmp_path):
    url, ckpt = hf_server
    res, result = bench(url, ckpt, tmp_path, "--num-warmups", "0")
    assert res.exit_code == 1, res.output
    out = " ".join(res.output.split())
    assert "every request failed" in out and "4x HTTP 422" in out and "ignore_eos" in out


@pytest.mark.parametrize("kind", ["completions", "chat"])
def test_bench_client_against_transformers_serve(hf_server, tmp_path, kind):
    url, ckpt = hf_server
    res, result = bench(url, ckpt, tmp_path, "--endpoint-type", kind, "--no-ignore-eos")
    assert res.exit_code == 0, res.output
    m = result["metrics"]
    assert m["completed"] == 4 and m["failed"] == 0
    # the server's usage counts; a random tiny model rarely hits EOS, and a short one is flagged, not hidden
    assert m["total_output_tokens"] == sum(result["output_lens"]) and 0 < m["total_output_tokens"] <= 24
    assert m["num_short"] == sum(n < 6 for n in result["output_lens"])
    assert m["mean_ttft_ms"] > 0 and m["mean_tpot_ms"] > 0 and all(n > 0 for n in result["input_lens"])
