"""Any OpenAI-compatible server (vLLM, SGLang, TensorRT-LLM, `nanotune serve`) as a benchmark backend, on
aiohttp's asyncio client (as vLLM's `bench serve` uses: its C HTTP parser keeps one client thread ahead of a
few hundred streams at a token per stream per step, where httpx's pure-Python HTTP stack was the client's
bottleneck; the sync one-off calls, /v1/models, stay on httpx).

Each request is a streamed `POST /v1/completions` (token-id prompt, or text when a tokenizer is given) or
`POST /v1/chat/completions` (`--endpoint-type chat`: one user message of text), with `max_tokens` =
`min_tokens` = the trace's output length and `ignore_eos: true` (so the server generates exactly that many
tokens), and `stream_options.include_usage` (so it reports how many it did generate). Like vLLM's
`bench serve` client, every SSE chunk carrying a choice with text (`text`, or `delta.content`, even "") is
one timing sample: TTFT is send -> first such chunk, ITL the gaps between them (a chunk with only a role
or only a finish_reason, which some servers send before and after the tokens, is not one); the output
length is the server's `usage.completion_tokens` (the chunk count if it sends none) and the prompt length
its `usage.prompt_tokens` when it reports one (a text prompt is tokenized by the server). A response
shorter than asked is kept and flagged (`is_short`); an HTTP error, an error event, a broken stream, a
timeout or a connection that dies is a failed request with its error. `ignore_eos=False` leaves out
`ignore_eos` and `min_tokens` (vLLM's extensions) for servers that reject fields they do not know.

The client runs an asyncio loop in one thread; `submit` hands it a coroutine. `request_timeout` bounds
each wait for the server (connecting, and each read of the stream), not a whole request's duration.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import urllib.parse

import aiohttp
import httpx

from nanotune.bench.backends.base import Backend
from nanotune.bench.records import BenchRequest, RequestRecord
from nanotune.event_loop import new_event_loop

ENDPOINT_TYPES = ("completions", "chat")
DEFAULT_REQUEST_TIMEOUT_S = 600.0
CONNECT_TIMEOUT_S = 30.0
READ_BUFFER_BYTES = 1 << 20  # the longest SSE line read whole (aiohttp's default, 64 KiB, fails longer ones)


class StreamError(Exception):
    """The server answered, but with an error (HTTP status, error event, truncated stream)."""


def base_url(url: str) -> urllib.parse.SplitResult:
    """`http://host:8000`, `.../v1`, `.../v1/completions` or `.../v1/chat/completions` -> `.../v1`."""
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--endpoint '{url}': expected http(s)://HOST:PORT, optionally ending in /v1")
    path = parts.path.rstrip("/").removesuffix("/completions").removesuffix("/chat")
    return parts._replace(path=path if path.endswith("/v1") else path + "/v1")


def completions_url(url: str, endpoint_type: str = "completions") -> urllib.parse.SplitResult:
    """The URL requests go to; raises ValueError naming a malformed --endpoint."""
    b = base_url(url)
    return b._replace(path=b.path + ("/chat/completions" if endpoint_type == "chat" else "/completions"))


def auth_headers(api_key: str | None) -> dict:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def served_model(url: str, timeout: float = 10.0, api_key: str | None = None) -> str:
    """The first model the server lists at /v1/models (what to put in `"model"` when --model is not given).
    Raises OSError/ValueError with a readable message when the server is unreachable or says nothing."""
    try:
        resp = httpx.get(base_url(url).geturl() + "/models", timeout=timeout, headers=auth_headers(api_key))
    except httpx.HTTPError as e:
        raise OSError(f"{type(e).__name__}: {e}") from None
    if resp.status_code != 200:
        raise ValueError(f"GET /v1/models answered HTTP {resp.status_code}: {error_text(resp.text)}")
    models = resp.json().get("data") or []
    if not models:
        raise ValueError("GET /v1/models listed no model")
    return models[0]["id"]


def error_text(body: str) -> str:
    """An error answer in one short line: OpenAI's error.message when the body is one, else the body."""
    try:
        err = json.loads(body).get("error")
        msg = err.get("message") if isinstance(err, dict) else err
        if msg:
            return str(msg)[:300]
    except (ValueError, AttributeError):
        pass
    return body.strip().replace("\n", " ")[:300]


class EndpointBackend(Backend):
    name = "endpoint"

    def __init__(self, url: str, model: str, vocab_size: int, num_params: int | None = None,
                 max_workers: int | None = None, request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S,
                 endpoint_type: str = "completions", api_key: str | None = None, tokenizer=None,
                 ignore_eos: bool = True) -> None:
        super().__init__()
        if endpoint_type not in ENDPOINT_TYPES:
            raise ValueError(f"--endpoint-type '{endpoint_type}': one of {', '.join(ENDPOINT_TYPES)}")
        if endpoint_type == "chat" and tokenizer is None:
            raise ValueError("--endpoint-type chat sends text: give --tokenizer DIR (a local Hugging Face "
                             "tokenizer folder) to turn the trace's prompts into text")
        self.url_text = url
        self.url = completions_url(url, endpoint_type)
        self.endpoint_type = endpoint_type
        self.model = model
        self.vocab_size = vocab_size
        self.num_params = num_params
        self.request_timeout = request_timeout
        self.tokenizer = tokenizer
        self.ignore_eos = ignore_eos
        self.headers = {"Content-Type": "application/json", "Accept": "text/event-stream",
                        **auth_headers(api_key)}
        self._max_connections = max_workers or 0  # aiohttp: 0 = no limit
        self._ended: queue.Queue[RequestRecord] = queue.Queue()
        self._tasks: set[asyncio.Task] = set()
        self._num_inflight = 0
        self._stopping = threading.Event()
        self._loop = new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="nanotune-http", daemon=True)
        self._thread.start()
        # made now (its SSL context takes a while), on the loop that will use it
        self._client = asyncio.run_coroutine_threadsafe(self._make_client(), self._loop).result(60)

    async def _make_client(self) -> aiohttp.ClientSession:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=min(CONNECT_TIMEOUT_S, self.request_timeout),
                                        sock_read=self.request_timeout)
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self._max_connections),
                                     timeout=timeout, read_bufsize=READ_BUFFER_BYTES)

    def describe(self) -> dict:
        return {"engine": "endpoint", "endpoint": self.url.geturl(), "endpoint_type": self.endpoint_type,
                "model": self.model, "num_params": self.num_params, "vocab_size": self.vocab_size,
                "prompts": "text" if self.tokenizer is not None else "token ids", "ignore_eos": self.ignore_eos,
                "request_timeout_s": self.request_timeout}

    def prompt(self, req: BenchRequest):
        if self.tokenizer is None:
            return list(req.prompt_ids)
        return self.tokenizer.decode(list(req.prompt_ids), skip_special_tokens=True)

    def payload(self, req: BenchRequest) -> dict:
        common = {"model": self.model, "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
        if self.ignore_eos:
            common.update(min_tokens=req.output_len, ignore_eos=True)
        if self.endpoint_type == "chat":
            return {**common, "messages": [{"role": "user", "content": self.prompt(req)}],
                    "max_completion_tokens": req.output_len}
        return {**common, "prompt": self.prompt(req), "max_tokens": req.output_len}

    # ---- the driver's side (its thread) -------------------------------------------------------------
    def submit(self, req: BenchRequest, rec: RequestRecord) -> None:
        self._num_inflight += 1
        body = json.dumps(self.payload(req)).encode()  # built here: a tokenizer is not shared across threads
        self._loop.call_soon_threadsafe(self._start, body, rec)

    def poll(self, timeout: float) -> list[RequestRecord]:
        ended = []
        try:
            ended.append(self._ended.get(timeout=max(timeout, 1e-3)))
            while True:
                ended.append(self._ended.get_nowait())
        except queue.Empty:
            pass
        return ended

    def stats(self) -> dict:
        return {"num_running": self._num_inflight}

    def abort(self) -> None:
        """Cut every open stream at once (their tasks are cancelled; a record stays as the driver marks it)."""
        self._stopping.set()
        self._loop.call_soon_threadsafe(lambda: [t.cancel() for t in list(self._tasks)])

    def close(self) -> None:
        if not self._loop.is_running():
            return
        asyncio.run_coroutine_threadsafe(self._client.close(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)

    # ---- the client's loop --------------------------------------------------------------------------
    def _start(self, body: bytes, rec: RequestRecord) -> None:
        task = self._loop.create_task(self._run(body, rec))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, body: bytes, rec: RequestRecord) -> None:
        rec.send_s = self.now()  # when this request leaves the client; the wait before it is queue time
        try:
            usage = await self._stream(body, rec)
            if usage.get("completion_tokens") is not None:
                rec.output_len = int(usage["completion_tokens"])
            if usage.get("prompt_tokens") is not None:
                rec.prompt_len = int(usage["prompt_tokens"])
            rec.finish(rec.token_times[-1] if rec.token_times else self.now())
        except asyncio.CancelledError:
            self._num_inflight -= 1
            return  # Ctrl-C: the driver marks it interrupted
        except Exception as e:  # every failure is recorded on its request, never dropped
            rec.fail(self.now(), self.failure_text(e))
        self._num_inflight -= 1
        if not self._stopping.is_set():
            self._ended.put(rec)

    def failure_text(self, e: Exception) -> str:
        """One line naming what went wrong: the server's own error, a read that waited past the timeout, a
        connection that could not be made (with the OS's reason) or broke."""
        if isinstance(e, StreamError):
            return str(e)
        if isinstance(e, aiohttp.ConnectionTimeoutError):
            return f"ConnectTimeout: no connection within {min(CONNECT_TIMEOUT_S, self.request_timeout):g} s"
        if isinstance(e, asyncio.TimeoutError):  # aiohttp's ServerTimeoutError (a read) is one
            return f"ReadTimeout: the server sent nothing for {self.request_timeout:g} s"
        if isinstance(e, aiohttp.ClientConnectorError):
            return f"{type(e.os_error).__name__}: {e}"
        return f"{type(e).__name__}: {e}".rstrip(": ")

    async def _stream(self, body: bytes, rec: RequestRecord) -> dict:
        """Send one request and read its SSE stream, stamping each chunk on `rec`; returns the server's
        usage ({} if it sent none). Raises StreamError on an error answer."""
        state = {"usage": {}, "done": False}
        async with self._client.post(self.url.geturl(), data=body, headers=self.headers) as resp:
            if resp.status != 200:
                text = (await resp.read()).decode("utf-8", "replace")
                raise StreamError(f"HTTP {resp.status}: {error_text(text)}")
            tail = b""
            # whatever has arrived, split into lines here: one wake-up per read, however many events it holds
            async for data in resp.content.iter_any():
                *lines, tail = (tail + data).split(b"\n")
                if self._take_lines(lines, rec, state):
                    break
            else:  # a last line without its newline
                self._take_lines([tail], rec, state)
        if not state["done"] and not state["usage"]:
            raise StreamError(f"stream ended early after {len(rec.token_times)} chunks "
                              "(no [DONE], no usage): server closed the connection")
        return state["usage"]

    def _take_lines(self, lines: list[bytes], rec: RequestRecord, state: dict) -> bool:
        """Account SSE lines that arrived together (one timestamp); True at [DONE]."""
        now = self.now()
        for raw in lines:
            if not raw.startswith(b"data:"):
                continue  # SSE comments, event names, blank separators
            payload = raw[5:].strip()
            if payload == b"[DONE]":
                state["done"] = True
                return True
            chunk = json.loads(payload)
            if chunk.get("error"):
                raise StreamError(f"server error: {error_text(json.dumps(chunk))}")
            if choices := chunk.get("choices"):
                c = choices[0]
                text = c.get("text") if "text" in c else (c.get("delta") or {}).get("content")
                if text is not None:  # a role-only or finish-only chunk carries no token
                    rec.add_tokens(now, 1)
                    rec.generated_text += text
            state["usage"] = chunk.get("usage") or state["usage"]
        return False
