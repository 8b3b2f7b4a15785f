"""`nanotune serve`'s default: the engine in its own process (nanotune.serve.engine_process), on a tiny local
Llama checkpoint on the CPU, against the same checkpoint with the engine in a thread of the server.

One server of each kind for the module (spawning the engine process costs seconds); the test that kills the
engine process runs last in the file, on the shared server.
"""

import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
from click.testing import CliRunner

from nanotune.serve.engine_process import EngineProcess
from nanotune.serve.run import BackgroundServer, ServeOptions, build_server, free_port
from nanotune.serve.testing import save_tiny_chat_checkpoint, wait_until

CPU = dict(device="cpu", dtype="float32")
ROOT = Path(__file__).resolve().parents[1]
EXACT = {"extra_body": {"ignore_eos": True}, "temperature": 0}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    # a long context: a request not aborted would run on for many seconds after its client left
    return save_tiny_chat_checkpoint(tmp_path_factory.mktemp("tiny-chat"), max_position_embeddings=8192)


@pytest.fixture(scope="module")
def proc_server(ckpt):
    srv = build_server(ServeOptions(model=str(ckpt), served_model_name="tiny", max_num_seqs=4, **CPU))
    assert isinstance(srv.loop_thread, EngineProcess) and srv.engine is None  # the default: no engine here
    assert srv.max_model_len == 8192 and srv.vocab_size > 250 and srv.max_num_requests == 4 + 4096
    with BackgroundServer(srv) as bg:
        yield bg
    assert srv.loop_thread._proc.exitcode is not None  # stopped with the server


@pytest.fixture(scope="module")
def thread_server(ckpt):
    srv = build_server(ServeOptions(model=str(ckpt), served_model_name="tiny", engine_in_thread=True, **CPU))
    assert srv.engine is not None
    with BackgroundServer(srv) as bg:
        yield bg


def client(bg):
    return openai.OpenAI(base_url=bg.url + "/v1", api_key="unused", max_retries=0)


def _wait(cond, timeout=15.0):
    return wait_until(cond, timeout)


def test_process_mode_gives_the_requested_tokens_and_the_thread_modes_greedy_tokens(proc_server, thread_server):
    """The word-level tokenizer decodes each id to one word: equal texts are equal token sequences."""
    p, t = client(proc_server), client(thread_server)
    prompts = ["w1 w2 w3", "w9 w8", [5, 6, 7, 8, 9, 10, 11]]
    for prompt, n in zip(prompts, (9, 14, 5), strict=True):
        a = p.completions.create(model="tiny", prompt=prompt, max_tokens=n, **EXACT)
        b = t.completions.create(model="tiny", prompt=prompt, max_tokens=n, **EXACT)
        assert a.usage.completion_tokens == n and len(a.choices[0].text.split()) == n
        assert a.choices[0].finish_reason == "length" and a.choices[0].text == b.choices[0].text
        chunks = list(p.completions.create(model="tiny", prompt=prompt, max_tokens=n, stream=True,
                                           stream_options={"include_usage": True}, **EXACT))
        token_chunks = [ch for ch in chunks if ch.choices]
        assert len(token_chunks) == n and chunks[-1].usage.completion_tokens == n
        assert "".join(ch.choices[0].text for ch in token_chunks) == a.choices[0].text
    msgs = [{"role": "user", "content": "w4 w5"}]
    a = p.chat.completions.create(model="tiny", messages=msgs, max_tokens=6, **EXACT)
    b = t.chat.completions.create(model="tiny", messages=msgs, max_tokens=6, **EXACT)
    assert a.usage.completion_tokens == 6 and a.choices[0].message.content == b.choices[0].message.content
    assert proc_server.server.loop_thread.num_steps > 0


def test_tp2_engine_process_serves_the_tp1_tokens(ckpt, thread_server):
    """`nanotune serve --tp 2`: the engine process drives two gloo ranks (it starts them itself) and the
    answers are the TP1 server's, greedy, streaming and not."""
    srv = build_server(ServeOptions(model=str(ckpt), served_model_name="tiny", tp=2, max_num_seqs=4, **CPU))
    with BackgroundServer(srv) as bg:
        c, t = client(bg), client(thread_server)
        for prompt, n in (("w1 w2 w3", 7), ([5, 6, 7, 8], 4)):
            a = c.completions.create(model="tiny", prompt=prompt, max_tokens=n, **EXACT)
            b = t.completions.create(model="tiny", prompt=prompt, max_tokens=n, **EXACT)
            assert a.usage.completion_tokens == n and a.choices[0].text == b.choices[0].text
            chunks = [ch for ch in c.completions.create(model="tiny", prompt=prompt, max_tokens=n, stream=True,
                                                        **EXACT) if ch.choices]
            assert "".join(ch.choices[0].text for ch in chunks) == a.choices[0].text
        assert httpx.get(bg.url + "/health").status_code == 200
    assert _wait(lambda: srv.loop_thread._proc.exitcode is not None)  # stopped with the server, ranks too


def test_concurrent_requests_are_answered_by_one_engine_process(proc_server):
    """More requests than max_num_seqs at once: some wait in the child's scheduler; each gets its tokens."""
    import concurrent.futures

    c = client(proc_server)
    ask = lambda i: c.completions.create(model="tiny", prompt=[3 + i, 4, 5], max_tokens=4 + i, **EXACT)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(ask, range(8)))
    assert [r.usage.completion_tokens for r in results] == [4 + i for i in range(8)]


@pytest.mark.parametrize("stream", [True, False])
def test_a_disconnect_frees_kv_in_the_engine_process(proc_server, stream):
    loop = proc_server.server.loop_thread
    body = {"prompt": list(range(3, 103)), "max_tokens": 8000, "ignore_eos": True, "stream": stream}
    if stream:
        with httpx.stream("POST", proc_server.url + "/v1/completions", json=body, timeout=30) as resp:
            next(x for x in resp.iter_lines() if x.startswith("data:"))
            assert _wait(lambda: loop.snapshot["num_running"] == 1 and loop.snapshot["kv_usage"] > 0)
    else:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(proc_server.url + "/v1/completions", json=body, timeout=1.0)
    num_steps = loop.num_steps
    # aborted long before its 8,000 tokens: the child's stats say nothing runs and every KV block is free
    assert _wait(lambda: loop.snapshot["num_running"] == loop.snapshot["num_waiting"] == 0
                 and loop.snapshot["kv_usage"] == 0), loop.snapshot
    assert not loop._callbacks and loop.num_steps - num_steps < 4000


def test_the_engine_process_facts_bound_requests(proc_server):
    """max_model_len and vocab_size came in the child's ready message: requests past them answer 400."""
    url = proc_server.url + "/v1/completions"
    r = httpx.post(url, json={"prompt": [1] * 8190, "max_tokens": 10})
    assert r.status_code == 400 and "context" in r.json()["error"]["message"]
    r = httpx.post(url, json={"prompt": [10**6], "max_tokens": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    assert httpx.get(proc_server.url + "/health").status_code == 200


def test_a_bad_config_exits_2_with_one_line(tmp_path):
    """The engine process refuses the checkpoint (its config.json is not JSON): one line naming the file."""
    from nanotune.cli import main

    (tmp_path / "config.json").write_text("{nope")
    res = CliRunner().invoke(main, ["serve", "--model", str(tmp_path), "--device", "cpu"])
    assert res.exit_code == 2, res.output
    assert "config.json:1: invalid JSON" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_an_engine_that_fails_to_build_names_the_error_and_leaves_no_process(capfd):
    """Not a bad option but a crash in the build (here a type the engine cannot compare): the child prints
    its traceback, the parent raises one line naming the exception."""
    from engine import EngineConfig
    from nanotune.serve.engine_process import EngineProcessError

    before = set(multiprocessing.active_children())
    with pytest.raises(EngineProcessError, match="failed to build the engine: TypeError: "):
        EngineProcess(EngineConfig(model="tiny-llama", device="cpu", dtype="float32", max_num_batched_tokens="x"))
    assert "Traceback" in capfd.readouterr().err
    assert not [p for p in set(multiprocessing.active_children()) - before if p.name == "nanotune-engine"]


def _descendants(pid: int) -> set[int]:
    """Every process below `pid` (from /proc: no psutil dependency)."""
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        out.update(kids)
        todo.extend(kids)
    return out


def _is_gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie is dead
    except OSError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_stops_the_server_and_its_engine_process(tmp_path):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "nanotune", "serve", "--model", "tiny-llama", "--device", "cpu",
                             "--port", str(port)], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        assert _wait(lambda: _health(port) == 200 or proc.poll() is not None, timeout=120), log.read_text()
        assert proc.poll() is None, log.read_text()
        kids = _descendants(proc.pid)
        assert kids  # the engine process (and multiprocessing's resource tracker)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
        assert _wait(lambda: all(_is_gone(p) for p in kids), timeout=20), kids
        assert "Traceback" not in log.read_text() and "engine process" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()


def _health(port: int) -> int | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code
    except httpx.HTTPError:
        return None


def test_zz_engine_process_death_fails_requests_and_health(proc_server):
    """Runs last (the name and its place in the file): it kills the module server's engine process."""
    loop = proc_server.server.loop_thread
    body = {"prompt": [5, 6, 7], "max_tokens": 900, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", proc_server.url + "/v1/completions", json=body, timeout=30) as resp:
        lines = resp.iter_lines()
        next(x for x in lines if x.startswith("data:"))
        os.kill(loop.pid, signal.SIGKILL)
        rest = [x for x in lines if x.startswith("data:")]
    assert any("engine process exited" in x and '"error"' in x for x in rest), rest[-3:]
    assert loop.error and "exit code -9" in loop.error
    health = httpx.get(proc_server.url + "/health")
    assert health.status_code == 503 and "engine process exited" in health.json()["error"]["message"]
    r = httpx.post(proc_server.url + "/v1/completions", json={"prompt": [1], "max_tokens": 2})
    assert r.status_code == 503 and "engine process exited" in r.json()["error"]["message"]
