"""Any OpenAI-compatible server (vLLM, SGLang, TensorRT-LLM) as a benchmark backend, stdlib only.

Each request is a streamed `POST /v1/completions` with the prompt as token ids, `max_tokens` = `min_tokens`
= the trace's output length and `ignore_eos: true` (so the server generates exactly that many tokens), and
`stream_options.include_usage` (so it reports how many it did generate). Like vLLM's `bench serve` client,
every SSE chunk carrying `choices` is one timing sample: TTFT is send -> first chunk, ITL the gaps between
chunks; the output length is the server's `usage.completion_tokens` (the chunk count if it sends none).
A response shorter than asked is kept and flagged (`is_short`); an HTTP error, a broken stream or a
connection that dies is a failed request with its error.

Requests run in a thread pool, one connection each. A request waiting for a free thread has not been sent:
its wait is client queue time, recorded apart from TTFT.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import queue
import socket
import threading
import urllib.parse

from nanotune.bench.backends.base import Backend
from nanotune.bench.records import BenchRequest, RequestRecord

MAX_THREADS = 1024


class StreamError(Exception):
    """The server answered, but with an error (HTTP status, error event, truncated stream)."""


def completions_url(url: str) -> urllib.parse.SplitResult:
    """`http://host:8000`, `.../v1` or `.../v1/completions` -> the completions URL."""
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--endpoint '{url}': expected http(s)://HOST:PORT, optionally ending in /v1")
    path = parts.path.rstrip("/")
    if not path.endswith("/completions"):
        path = (path if path.endswith("/v1") else path + "/v1") + "/completions"
    return parts._replace(path=path)


def _connect(url: urllib.parse.SplitResult, timeout: float) -> http.client.HTTPConnection:
    cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    return cls(url.hostname, url.port, timeout=timeout)


def served_model(url: str, timeout: float = 10.0) -> str:
    """The first model the server lists at /v1/models (what to put in `"model"` when --model is not given).
    Raises OSError/ValueError with a readable message when the server is unreachable or says nothing."""
    u = completions_url(url)
    conn = _connect(u, timeout)
    try:
        conn.request("GET", u.path.removesuffix("/completions") + "/models")
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise ValueError(f"GET /v1/models answered HTTP {resp.status}")
        models = json.loads(body).get("data") or []
        if not models:
            raise ValueError("GET /v1/models listed no model")
        return models[0]["id"]
    finally:
        conn.close()


class EndpointBackend(Backend):
    name = "endpoint"

    def __init__(self, url: str, model: str, vocab_size: int, num_params: int | None = None,
                 max_workers: int = MAX_THREADS, request_timeout: float = 600.0) -> None:
        super().__init__()
        self.url_text = url
        self.url = completions_url(url)
        self.model = model
        self.vocab_size = vocab_size
        self.num_params = num_params
        self.request_timeout = request_timeout
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(max_workers, MAX_THREADS)),
                                                           thread_name_prefix="nanotune-http")
        self._ended: queue.Queue[RequestRecord] = queue.Queue()
        self._lock = threading.Lock()
        self._conns: set[http.client.HTTPConnection] = set()
        self._num_inflight = 0
        self._stopping = threading.Event()

    def describe(self) -> dict:
        return {"engine": "endpoint", "endpoint": self.url.geturl(), "model": self.model,
                "num_params": self.num_params, "vocab_size": self.vocab_size}

    def payload(self, req: BenchRequest) -> dict:
        return {"model": self.model, "prompt": list(req.prompt_ids), "max_tokens": req.output_len,
                "min_tokens": req.output_len, "ignore_eos": True, "temperature": 0.0, "stream": True,
                "stream_options": {"include_usage": True}}

    def submit(self, req: BenchRequest, rec: RequestRecord) -> None:
        with self._lock:
            self._num_inflight += 1
        self._pool.submit(self._run, req, rec)

    def _run(self, req: BenchRequest, rec: RequestRecord) -> None:
        if self._stopping.is_set():
            return
        conn = _connect(self.url, self.request_timeout)
        with self._lock:
            self._conns.add(conn)
        body = json.dumps(self.payload(req)).encode()
        rec.send_s = self.now()  # when this request leaves the client; the wait before it is queue time
        try:
            usage_tokens = self._stream(conn, body, rec)
            if not self._stopping.is_set():  # after Ctrl-C the driver marks it interrupted instead
                if usage_tokens is not None:
                    rec.output_len = usage_tokens
                rec.finish(rec.token_times[-1] if rec.token_times else self.now())
        except Exception as e:  # every failure is recorded on its request, never dropped
            if not self._stopping.is_set():
                msg = str(e) if isinstance(e, StreamError) else f"{type(e).__name__}: {e}".rstrip(": ")
                rec.fail(self.now(), msg)
        finally:
            conn.close()
            with self._lock:
                self._conns.discard(conn)
                self._num_inflight -= 1
        if not self._stopping.is_set():
            self._ended.put(rec)

    def _stream(self, conn: http.client.HTTPConnection, body: bytes, rec: RequestRecord) -> int | None:
        """Send one request and read its stream, stamping each chunk on `rec`; returns the server's
        completion token count (None if it sent no usage). Raises StreamError on an error answer."""
        conn.request("POST", self.url.path, body=body,
                     headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
        resp = conn.getresponse()
        if resp.status != 200:
            text = resp.read(500).decode("utf-8", "replace").strip().replace("\n", " ")
            raise StreamError(f"HTTP {resp.status}: {text[:300]}")
        usage_tokens = None
        is_done = False
        while not is_done:
            line = resp.readline()
            if not line:
                break  # connection closed
            line = line.strip()
            if not line.startswith(b"data:"):
                continue  # SSE comments, event names, blank separators
            data = line[5:].strip()
            if data == b"[DONE]":
                is_done = True
                break
            chunk = json.loads(data)
            if chunk.get("error"):
                raise StreamError(f"server error: {json.dumps(chunk['error'])[:300]}")
            if chunk.get("choices"):
                rec.add_tokens(self.now(), 1)
            usage = chunk.get("usage") or {}
            if usage.get("completion_tokens") is not None:
                usage_tokens = int(usage["completion_tokens"])
        if not is_done and usage_tokens is None:
            raise StreamError(f"stream ended early after {len(rec.token_times)} chunks "
                              "(no [DONE], no usage): server closed the connection")
        return usage_tokens

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
        """Cut every open stream (a blocked read returns at once) and drop requests not yet started."""
        self._stopping.set()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                if conn.sock is not None:
                    conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self._pool.shutdown(wait=not self._stopping.is_set(), cancel_futures=True)
