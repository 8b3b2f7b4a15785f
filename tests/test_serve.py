"""`nanotune serve` on tiny models on 127.0.0.1, driven by the `openai` package, httpx and `nanotune bench`.

Two servers per module: a tiny local Hugging Face checkpoint with a word-level tokenizer and chat template
(text, chat, stop strings, seeds) and the `tiny-llama` preset (token ids only, small limits for the queue).
"""

import json

import httpx
import openai
import pytest

from nanotune.serve.run import BackgroundServer, ServeOptions, build_server
from nanotune.serve.testing import save_tiny_chat_checkpoint, wait_until

CPU = dict(device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def ckpt_server(tmp_path_factory):
    path = save_tiny_chat_checkpoint(tmp_path_factory.mktemp("tiny-chat"))
    srv = build_server(ServeOptions(model=str(path), served_model_name="tiny-chat", **CPU))
    with BackgroundServer(srv) as bg:
        yield bg


@pytest.fixture(scope="module")
def preset_server():
    # in a thread: the disconnect test reads the engine object itself (test_serve_process reads the snapshot)
    srv = build_server(ServeOptions(model="tiny-llama", max_num_seqs=2, max_queued=1, engine_in_thread=True,
                                    **CPU))
    with BackgroundServer(srv) as bg:
        yield bg


def client(bg):
    return openai.OpenAI(base_url=bg.url + "/v1", api_key="unused", max_retries=0)


EXACT = {"extra_body": {"ignore_eos": True}, "temperature": 0}


def test_openai_client_gets_exactly_the_requested_tokens(ckpt_server):
    c = client(ckpt_server)
    r = c.completions.create(model="tiny-chat", prompt="w1 w2 w3", max_tokens=9, **EXACT)
    assert r.usage.completion_tokens == 9 and r.usage.prompt_tokens == 3
    assert r.choices[0].finish_reason == "length" and len(r.choices[0].text.split()) == 9
    chunks = list(c.completions.create(model="tiny-chat", prompt=[5, 6, 7, 8], max_tokens=7, stream=True,
                                       stream_options={"include_usage": True}, **EXACT))
    assert len([ch for ch in chunks if ch.choices]) == 7 and chunks[-1].usage.completion_tokens == 7
    msgs = [{"role": "user", "content": "w4 w5"}]
    r = c.chat.completions.create(model="tiny-chat", messages=msgs, max_tokens=6, **EXACT)
    assert r.usage.completion_tokens == 6 and len(r.choices[0].message.content.split()) == 6
    assert r.choices[0].message.role == "assistant"
    chunks = list(c.chat.completions.create(model="tiny-chat", messages=msgs, max_completion_tokens=5,
                                            stream=True, stream_options={"include_usage": True}, **EXACT))
    token_chunks = [ch for ch in chunks if ch.choices]
    assert len(token_chunks) == 5 and chunks[-1].usage.completion_tokens == 5
    assert token_chunks[0].choices[0].delta.role == "assistant" and token_chunks[-1].choices[0].finish_reason
    assert "".join(ch.choices[0].delta.content for ch in token_chunks) == r.choices[0].message.content[
        :len("".join(ch.choices[0].delta.content for ch in token_chunks))]  # greedy: the same opening
    assert [m.id for m in c.models.list()] == ["tiny-chat"]


def test_seeds_are_honoured_and_stop_strings_cut_the_text(ckpt_server):
    c = client(ckpt_server)
    sample = lambda seed: c.completions.create(model="tiny-chat", prompt="w1", max_tokens=12, temperature=1.5,
                                               seed=seed, **{"extra_body": {"ignore_eos": True}}).choices[0].text
    assert sample(7) == sample(7)
    assert len({sample(s) for s in range(4)}) > 1
    full = c.completions.create(model="tiny-chat", prompt="w9 w8", max_tokens=12, **EXACT).choices[0].text
    words = full.split()
    stop = " ".join(words[4:6])
    r = c.completions.create(model="tiny-chat", prompt="w9 w8", max_tokens=12, stop=[stop], **EXACT)
    assert r.choices[0].finish_reason == "stop" and r.choices[0].text == full[:full.index(stop)]
    assert r.usage.completion_tokens < 12


def _wait(cond, timeout=10.0):
    return wait_until(cond, timeout)


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_frees_its_kv(preset_server, stream):
    eng = preset_server.server.engine
    loop = preset_server.server.loop_thread
    body = {"prompt": list(range(1, 200)), "max_tokens": 3800, "ignore_eos": True, "stream": stream}
    if stream:
        with httpx.stream("POST", preset_server.url + "/v1/completions", json=body, timeout=30) as resp:
            lines = resp.iter_lines()
            next(x for x in lines if x.startswith("data:"))
            assert loop.snapshot["num_running"] == 1 and loop.snapshot["kv_usage"] > 0
    else:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(preset_server.url + "/v1/completions", json=body, timeout=1.0)
    # aborted long before its 3,800 tokens: nothing running, every KV block free, the engine forgot it
    assert _wait(lambda: loop.snapshot["num_running"] == 0 and eng.block_manager.num_used == 0), loop.snapshot
    assert not eng.requests and loop.snapshot["kv_usage"] == 0


def _error(resp, status):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["message"] and err["type"] and err["code"] == status
    return err


def test_bad_requests_answer_400_and_the_server_keeps_serving(preset_server, ckpt_server):
    url = preset_server.url + "/v1/completions"
    assert "not valid JSON" in _error(httpx.post(url, content=b"{nope"), 400)["message"]
    assert _error(httpx.post(url, json={"prompt": [1], "temperature": "hot"}), 400)["param"] == "temperature"
    assert _error(httpx.post(url, json={"prompt": [1], "n": 2}), 400)["param"] == "n"
    assert _error(httpx.post(url, json={"prompt": [1], "max_tokens": 0}), 400)["param"] == "max_tokens"
    assert _error(httpx.post(url, json={"prompt": [10**9]}), 400)["param"] == "prompt"
    assert "context" in _error(httpx.post(url, json={"prompt": [1] * 4000, "max_tokens": 200}), 400)["message"]
    assert "tokenizer" in _error(httpx.post(url, json={"prompt": "hello"}), 400)["message"]
    chat = preset_server.url + "/v1/chat/completions"
    assert "tokenizer" in _error(httpx.post(chat, json={"messages": [{"role": "user", "content": "x"}]}),
                                 400)["message"]
    assert _error(httpx.post(url, json={"prompt": [1], "model": "gpt-9"}), 404)["param"] == "model"
    assert _error(httpx.get(preset_server.url + "/v2/nothing"), 404)
    ok = httpx.post(url, json={"prompt": [1, 2], "max_tokens": 3, "ignore_eos": True})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3
    assert httpx.get(preset_server.url + "/health").status_code == 200


def test_a_full_queue_answers_503_with_retry_after(preset_server):
    """max_num_seqs=2 + max_queued=1: a fourth request while three are in the server is turned away."""
    url = preset_server.url + "/v1/completions"
    body = {"prompt": list(range(1, 50)), "max_tokens": 3000, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=30) as c:
        streams = [c.stream("POST", url, json=body) for _ in range(3)]
        resps = [s.__enter__() for s in streams]
        try:
            assert [r.status_code for r in resps] == [200] * 3
            busy = httpx.post(url, json={"prompt": [1], "max_tokens": 2})
            _error(busy, 503)
            assert busy.headers["Retry-After"] == "1"
        finally:
            for s in streams:
                s.__exit__(None, None, None)
    loop = preset_server.server.loop_thread
    assert _wait(lambda: loop.snapshot["num_running"] == 0 and loop.snapshot["num_waiting"] == 0)
    ok = httpx.post(url, json={"prompt": [1], "max_tokens": 2, "ignore_eos": True})
    assert ok.status_code == 200


def test_metrics_count_tokens_and_latencies(preset_server):
    before = httpx.get(preset_server.url + "/metrics").text
    httpx.post(preset_server.url + "/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": 4,
                                                             "ignore_eos": True})
    text = httpx.get(preset_server.url + "/metrics").text
    value = lambda t, name: sum(float(line.split()[-1]) for line in t.splitlines()
                                if line.startswith(name + "{") or line.startswith(name + " "))
    assert value(text, "nanotune_generation_tokens_total") - value(before, "nanotune_generation_tokens_total") == 4
    assert value(text, "nanotune_prompt_tokens_total") - value(before, "nanotune_prompt_tokens_total") == 3
    assert value(text, "nanotune_e2e_request_latency_seconds_count") >= 1
    assert value(text, "nanotune_time_to_first_token_seconds_count") >= 1
    for g in ("nanotune_num_requests_running", "nanotune_num_requests_waiting", "nanotune_kv_cache_usage_perc"):
        assert g in text
    assert json.loads(httpx.get(preset_server.url + "/v1/models").text)["data"][0]["id"] == "tiny-llama"


@pytest.mark.parametrize("args,says", [(["--allreduce", "copy-engine"], "--allreduce copy-engine: only with --tp > 1"),
                                       (["--tp", "2", "--allreduce", "symm-mem-one-shot"], "needs CUDA GPUs"),
                                       (["--tp", "2", "--allreduce", "ring"], "allreduce 'ring': unknown")])
def test_bad_allreduce_is_one_line(args, says):
    from click.testing import CliRunner

    from nanotune.cli import main

    res = CliRunner().invoke(main, ["serve", "--model", "tiny-llama", "--device", "cpu", "--engine-in-thread", *args])
    assert res.exit_code == 2 and says in res.output and "Traceback" not in res.output, res.output
