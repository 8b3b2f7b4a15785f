"""The OpenAI-compatible HTTP API on aiohttp.web: /v1/completions, /v1/chat/completions (plain and SSE),
/v1/models, /health, /metrics.

Each request waits on an asyncio queue fed by the engine loop: a thread of this process (nanotune.serve.loop)
or, for `nanotune serve` by default, the reader thread of the engine's own process
(nanotune.serve.engine_process). A client that goes
away cancels its handler (the runner is made with handler_cancellation=True; a write to a closed stream
raises too), and the `finally` aborts its engine request, which frees its KV blocks. Admission is bounded:
past `max_num_seqs + max_queued` requests in the server a new one is answered 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from aiohttp import web

from nanotune.serve.loop import EngineEvent, EngineLoop, call_each
from nanotune.serve.metrics import ServerMetrics
from nanotune.serve.protocol import BadRequest, GenerationRequest, parse_request
from nanotune.serve.text import Detokenizer, encode_prompt

RETRY_AFTER_S = 1


def sse(data: str) -> bytes:
    """One server-sent event carrying `data` (a JSON text, or [DONE])."""
    return f"data: {data}\n\n".encode()

_TEXT_MARK = "\x00nanotune-chunk-text\x00"  # stands for a chunk's text while its JSON around it is built


def error_response(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                   headers: dict | None = None) -> web.Response:
    """OpenAI's error body: {"error": {"message", "type", "param", "code"}}."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def json_errors(request, handler):
    """aiohttp's own 404/405/413 answers as OpenAI error bodies too."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error_response(e.status, e.reason or str(e), "not_found_error" if e.status == 404 else
                              "invalid_request_error")


class Server:
    """`engine` runs in a thread of this process (EngineLoop), or `loop` is given: an engine loop with the
    same interface, such as nanotune.serve.engine_process.EngineProcess (then `engine` is None)."""

    def __init__(self, engine, model_name: str, tokenizer=None, max_queued: int = 4096, loop=None):
        self.engine = engine
        self.model_name = model_name
        self.tokenizer = tokenizer
        self.loop_thread = loop if loop is not None else EngineLoop(engine)
        facts = self.loop_thread.facts  # nanotune.serve.loop.engine_facts
        self.max_model_len = facts["max_model_len"]
        self.vocab_size = facts["vocab_size"]
        self.max_num_requests = facts["max_num_seqs"] + max_queued
        self.num_inflight = 0
        self.metrics = ServerMetrics(lambda: self.loop_thread.snapshot, model_name)
        self.created = int(time.time())

    def app(self) -> web.Application:
        app = web.Application(middlewares=[json_errors], client_max_size=64 << 20)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.prometheus)
        app.on_startup.append(lambda app: self._start())
        app.on_cleanup.append(lambda app: self._stop())
        return app

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self.loop_thread.dispatch = lambda pairs: loop.call_soon_threadsafe(call_each, pairs)
        self.loop_thread.start()

    async def _stop(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.loop_thread.stop)

    async def completions(self, request) -> web.StreamResponse:
        return await self.generate(request, is_chat=False)

    async def chat_completions(self, request) -> web.StreamResponse:
        return await self.generate(request, is_chat=True)

    # ---- small endpoints ----------------------------------------------------------------------------
    async def models(self, request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "nanotune",
             "max_model_len": self.max_model_len}]})

    async def health(self, request) -> web.Response:
        if self.loop_thread.error:
            return error_response(503, f"engine failed: {self.loop_thread.error}", "server_error")
        return web.Response(text="ok")

    async def prometheus(self, request) -> web.Response:
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8",
                            headers={"X-Prometheus-Version": "0.0.4"})

    # ---- generation ---------------------------------------------------------------------------------
    def _check(self, req: GenerationRequest) -> list[int]:
        """The prompt ids, and req.max_tokens filled in; BadRequest when the request cannot run here."""
        if req.model and req.model != self.model_name:
            raise BadRequest(f"model '{req.model}' is not served here (this server has '{self.model_name}')",
                             "model")
        if req.stop and self.tokenizer is None:
            raise BadRequest("'stop' strings need a tokenizer and this server has none (use stop_token_ids)",
                             "stop")
        ids = req.prompt_ids if req.prompt_ids is not None else encode_prompt(self.tokenizer, req.text,
                                                                               req.messages)
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise BadRequest(f"prompt token {bad[0]} outside the vocabulary [0, {self.vocab_size})", "prompt")
        limit = self.max_model_len
        if req.max_tokens is None:
            req.max_tokens = max(1, (limit or len(ids) + 1) - len(ids))
        if limit and len(ids) + req.max_tokens > limit:
            raise BadRequest(f"prompt {len(ids)} + max_tokens {req.max_tokens} tokens exceeds this model's "
                             f"context of {limit}", "max_tokens")
        return ids

    async def generate(self, request: web.Request, is_chat: bool) -> web.StreamResponse:
        received = time.perf_counter()
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return error_response(400, f"the body is not valid JSON: {e}")
        try:
            req = parse_request(body, is_chat)
            ids = self._check(req)
            params = req.sampling_params(req.max_tokens)
        except BadRequest as e:
            return error_response(404 if e.param == "model" else 400, str(e), param=e.param)
        except ValueError as e:  # SamplingParams' own checks
            return error_response(400, str(e))
        if self.loop_thread.error:
            return error_response(503, f"engine failed: {self.loop_thread.error}", "server_error")
        if self.num_inflight >= self.max_num_requests:
            self.metrics.rejected.inc()
            return error_response(503, f"the server's queue is full ({self.num_inflight} requests); retry later",
                                  "service_unavailable", headers={"Retry-After": str(RETRY_AFTER_S)})
        rid = f"{'chatcmpl' if is_chat else 'cmpl'}-{uuid.uuid4().hex}"
        events: asyncio.Queue[EngineEvent] = asyncio.Queue()
        self.num_inflight += 1
        is_done = False
        try:
            self.loop_thread.add(rid, ids, params, events.put_nowait)  # called on this loop (see _start)
            self.metrics.prompt_tokens.inc(len(ids))
            run = _Run(self, req, rid, len(ids), received, is_chat)
            if req.stream:  # headers now: a queued request's client sees it was accepted
                response = await run.stream(request, events)
            else:
                first = await events.get()
                if first.error:  # the engine refused it (the KV cache can never hold it)
                    is_done = True
                    return error_response(400, first.error)
                response = await run.collect(first, events)
            is_done = True
            return response
        finally:
            self.num_inflight -= 1
            if not is_done:  # the client went away (or the write failed): free its KV now
                self.loop_thread.abort(rid)


class _Run:
    """One request's answer, built from engine events: token counts, text, timings, the chunks."""

    def __init__(self, server: Server, req: GenerationRequest, rid: str, num_prompt: int, received: float,
                 is_chat: bool):
        self.server, self.req, self.rid, self.is_chat = server, req, rid, is_chat
        self.num_prompt, self.received = num_prompt, received
        self.num_tokens = 0
        self.last_t: float | None = None
        self.detok = Detokenizer(server.tokenizer, req.stop)
        self.finish_reason: str | None = None
        self.created = int(time.time())  # one stamp for the whole answer, every chunk of a stream included
        # A stream's chunks differ only in their text while the request runs: the rest of the JSON is made once
        # (the server writes one chunk per stream per engine step, so this is its busiest line), from the chunk
        # envelope() and choice() build around a marker text, so their layout has one owner
        marked = self.chunk_json(_TEXT_MARK, is_first=False)
        head, tail = marked.split(json.dumps(_TEXT_MARK))
        self._mid_chunk = head, tail

    def take(self, ev: EngineEvent) -> str:
        """Account one engine event; returns the text it adds. Ends the request at a stop string."""
        m, t = self.server.metrics, time.perf_counter()
        if ev.token_ids:
            if self.last_t is None:
                m.ttft.observe(t - self.received)
            else:
                m.tpot.observe(t - self.last_t)
            self.last_t = t
            self.num_tokens += len(ev.token_ids)
            m.generation_tokens.inc(len(ev.token_ids))
        text = self.detok.add(ev.token_ids)
        if self.detok.is_stopped and not ev.is_finished:
            self.server.loop_thread.abort(self.rid)
            self.finish_reason = "stop"
        elif ev.is_finished:
            text += self.detok.flush()
            self.finish_reason = "stop" if self.detok.is_stopped else ev.finish_reason
        if self.finish_reason:
            m.e2e.observe(t - self.received)
            m.finish(self.finish_reason)
        return text

    def usage(self) -> dict:
        return {"prompt_tokens": self.num_prompt, "completion_tokens": self.num_tokens,
                "total_tokens": self.num_prompt + self.num_tokens}

    def envelope(self, choices: list[dict], is_chunk: bool) -> dict:
        kind = ("chat.completion" if self.is_chat else "text_completion") + (".chunk" if is_chunk and self.is_chat
                                                                             else "")
        return {"id": self.rid, "object": kind, "created": self.created, "model": self.server.model_name,
                "choices": choices}

    def choice(self, text: str, is_chunk: bool, is_first: bool = False) -> dict:
        if not self.is_chat:
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": self.finish_reason}
        if is_chunk:
            delta = {"role": "assistant", "content": text} if is_first else {"content": text}
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": self.finish_reason}
        return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                "finish_reason": self.finish_reason}

    async def collect(self, ev: EngineEvent, events: asyncio.Queue) -> web.Response:
        parts = [self.take(ev)]
        while not self.finish_reason:
            ev = await events.get()
            if ev.error:
                return error_response(500, ev.error, "server_error")
            parts.append(self.take(ev))
        return web.json_response({**self.envelope([self.choice("".join(parts), False)], False),
                                  "usage": self.usage()})

    def chunk_json(self, text: str, is_first: bool) -> str:
        """The JSON of one stream chunk carrying `text`."""
        return json.dumps(self.envelope([self.choice(text, True, is_first)], True))

    def chunk(self, text: str, is_first: bool) -> bytes:
        """One SSE event carrying `text`: chunk_json's, from the pre-built halves while nothing but the text
        differs (no finish reason yet; not a chat stream's first chunk, which carries the role)."""
        if self.finish_reason is None and not (is_first and self.is_chat):
            head, tail = self._mid_chunk
            return sse(f"{head}{json.dumps(text)}{tail}")
        return sse(self.chunk_json(text, is_first))

    async def stream(self, request: web.Request, events: asyncio.Queue) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        is_first = True
        ev = await events.get()
        while True:
            # every event already queued goes out in one write (one chunk per token still: a client counts
            # chunks as tokens); when the server keeps up that is one event, when it falls behind it catches up
            parts = []
            while True:
                if ev.error:  # headers are out: the error goes in the stream, as OpenAI's servers do
                    err = {"error": {"message": ev.error, "type": "server_error", "param": None, "code": 500}}
                    parts.append(sse(json.dumps(err)))
                    break
                text = self.take(ev)
                if ev.token_ids or self.finish_reason:
                    parts.append(self.chunk(text, is_first))
                    is_first = False
                if self.finish_reason or events.empty():
                    break
                ev = events.get_nowait()
            if parts:  # (an event that carries no token and does not end the request sends nothing)
                await resp.write(b"".join(parts))
            if ev.error or self.finish_reason:
                break
            ev = await events.get()
        if self.req.include_usage:
            await resp.write(sse(json.dumps({**self.envelope([], True), "usage": self.usage()})))
        await resp.write(sse("[DONE]"))
        await resp.write_eof()
        return resp
