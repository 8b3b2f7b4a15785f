"""The server's SSE stream: the pre-built chunk JSON equals the general one, and a stream whose server fell
behind the engine catches up in fewer writes while still sending one chunk per token, in order."""

import json
import random
import time
import types

import aiohttp.web
import httpx
import pytest

from nanotune.bench.testing import FakeEngine
from nanotune.serve.app import Server, _Run
from nanotune.serve.protocol import parse_request
from nanotune.serve.run import BackgroundServer


def general_chunk(run: _Run, text: str, is_first: bool) -> bytes:
    return f"data: {json.dumps(run.envelope([run.choice(text, True, is_first)], True))}\n\n".encode()


@pytest.mark.parametrize("is_chat", [False, True])
def test_prebuilt_chunks_equal_the_general_json(is_chat):
    server = types.SimpleNamespace(model_name='m "quoted" \u00e9', tokenizer=None, metrics=None)
    body = {"messages": [{"role": "user", "content": "hi"}]} if is_chat else {"prompt": [1, 2]}
    run = _Run(server, parse_request(body, is_chat), "cmpl-x", 2, 0.0, is_chat)
    rng = random.Random(0)
    alphabet = 'ab "\\\n\t\u00e9\u4e2d\U0001f600</>'
    texts = ["", " ", *("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(50))]
    for i, text in enumerate(texts):
        assert run.chunk(text, is_first=i == 0) == general_chunk(run, text, is_first=i == 0)
        json.loads(run.chunk(text, is_first=False)[6:])  # each one a JSON object on its own
    run.finish_reason = "length"  # the last chunk carries the reason: the general path
    assert run.chunk("end", False) == general_chunk(run, "end", False)
    assert json.loads(run.chunk("end", False)[6:])["choices"][0]["finish_reason"] == "length"


def test_a_lagging_stream_catches_up_in_fewer_writes_with_one_chunk_per_token(monkeypatch):
    writes = []
    write = aiohttp.web.StreamResponse.write

    async def counting_write(self, data):
        writes.append(data.count(b"data: "))
        return await write(self, data)

    monkeypatch.setattr(aiohttp.web.StreamResponse, "write", counting_write)
    engine = FakeEngine(max_num_seqs=4, step_s=0.002)
    engine.config = types.SimpleNamespace(max_num_seqs=4)
    with BackgroundServer(Server(engine, "fake")) as bg:
        body = {"prompt": [1, 2, 3], "max_tokens": 300, "stream": True, "ignore_eos": True}
        tokens = []
        with httpx.stream("POST", bg.url + "/v1/completions", json=body, timeout=30) as resp:
            lines = resp.iter_lines()
            tokens.append(next(lines))
            # the server's event loop stalls while the engine thread goes on stepping: its events queue up
            bg._loop.call_soon_threadsafe(time.sleep, 0.3)
            tokens += [line for line in lines if line.startswith("data: ")]
    assert tokens[-1] == "data: [DONE]"
    chunks = [json.loads(t[6:]) for t in tokens[:-1]]
    assert len(chunks) == 300 and chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert sum(writes) == 301 and max(writes) > 10  # the backlog went out in a few writes, not one each
