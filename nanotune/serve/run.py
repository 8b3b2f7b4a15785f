"""Build the engine for `nanotune serve` and run the HTTP server: in the foreground (the CLI) or in a
background thread on a free port (tests and scripts that drive a server from the same process)."""

from __future__ import annotations

import asyncio
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from nanotune.errors import UserError
from nanotune.event_loop import new_event_loop
from nanotune.serve.app import Server
from nanotune.serve.text import load_tokenizer


@dataclass(frozen=True)
class ServeOptions:
    model: str
    tp: int = 1
    allreduce: str = "nccl"  # EngineConfig.allreduce (tp > 1)
    plan: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    max_model_len: int | None = None
    served_model_name: str | None = None
    tokenizer: str | None = None  # a local folder; default: the model folder when it has tokenizer files
    max_queued: int = 4096
    engine_in_thread: bool = False  # the engine in a thread of the server process, not in its own process


def engine_config(o: ServeOptions):
    from engine import EngineConfig

    kw = {k: v for k, v in (("max_num_batched_tokens", o.max_num_batched_tokens),
                            ("max_num_seqs", o.max_num_seqs), ("max_model_len", o.max_model_len)) if v}
    if o.allreduce != "nccl" and o.tp == 1:
        raise UserError(f"--allreduce {o.allreduce}: only with --tp > 1 (one rank has no all-reduce)")
    return EngineConfig(model=o.model, device=o.device, dtype=o.dtype, plan=o.plan, seed=o.seed, tp=o.tp,
                        allreduce=o.allreduce, **kw)


def build_server(o: ServeOptions, engine=None) -> Server:
    """The Server over a new LLMEngine in its own process (the default), or in a thread of this process
    (`o.engine_in_thread`, or `engine` given: an engine already built, such as a test's fake)."""
    tokenizer = load_tokenizer(o.tokenizer or o.model)
    if o.tokenizer and tokenizer is None:
        raise UserError(f"--tokenizer {o.tokenizer}: no tokenizer files there")
    name = o.served_model_name or (Path(o.model).name if Path(o.model).is_dir() else o.model)
    loop = None
    if engine is None and o.engine_in_thread:
        from engine import LLMEngine

        engine = LLMEngine(engine_config(o))
    elif engine is None:
        from nanotune.serve.engine_process import EngineProcess

        loop = EngineProcess(engine_config(o))
    return Server(engine, name, tokenizer, o.max_queued, loop=loop)


def serve_forever(server: Server, host: str, port: int) -> None:
    """Run until Ctrl-C / SIGTERM (aiohttp's run_app handles both and runs the cleanup)."""
    from aiohttp import web

    web.run_app(server.app(), host=host, port=port, handler_cancellation=True, access_log=None,
                print=lambda *a: None, loop=new_event_loop())


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class BackgroundServer:
    """The server on its own event loop in a daemon thread: `with BackgroundServer(server) as bg: bg.url`."""

    def __init__(self, server: Server, host: str = "127.0.0.1", port: int | None = None):
        self.server, self.host, self.port = server, host, port or free_port(host)
        self._loop = new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nanotune-http", daemon=True)
        self._runner = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        from aiohttp import web

        asyncio.set_event_loop(self._loop)
        self._runner = web.AppRunner(self.server.app(), handler_cancellation=True, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, self.host, self.port).start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def start(self) -> BackgroundServer:
        self._thread.start()
        if not self._ready.wait(60):
            raise RuntimeError("the server did not start within 60 s")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
