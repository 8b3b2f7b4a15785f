"""The engine behind the server: one thread owns the LLMEngine and runs its step loop; the HTTP side talks
to it only through a command queue (add, abort) and per-request callbacks.

The engine is not thread-safe and a step blocks for a whole iteration, so it never runs on the event
loop. Callbacks are invoked from the engine thread; the server turns them into asyncio events with
`loop.call_soon_threadsafe`.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from engine.request import RequestOutput, SamplingParams

IDLE_WAIT_S = 0.05  # how long the idle loop blocks on its command queue before looking again


@dataclass
class EngineEvent:
    """What the engine thread tells one request: new tokens, its end, or an error (then it is over)."""

    token_ids: list[int]
    is_finished: bool = False
    finish_reason: str | None = None
    error: str | None = None


Callback = Callable[[EngineEvent], None]


def engine_facts(engine) -> dict:
    """What the server checks requests against; an engine process sends these in its ready message."""
    return {"max_model_len": int(getattr(engine, "max_model_len", 0) or 0) or None,
            "vocab_size": int(engine.vocab_size), "max_num_seqs": int(engine.config.max_num_seqs)}


def call_each(pairs: list[tuple[Callback, EngineEvent]]) -> None:
    for callback, event in pairs:
        callback(event)


class EngineLoop:
    """Runs `engine.step()` in a daemon thread while any request is unfinished.

    `engine` follows LLMEngine's protocol: add_request(ids, params, request_id), step() -> [RequestOutput],
    abort(request_id), has_unfinished(), stats(). Each step's events go out in one `dispatch(pairs)` call
    (the server hands the whole list to its event loop at once: one wake-up per step, not per request).
    """

    def __init__(self, engine, dispatch: Callable[[list], None] = call_each) -> None:
        self.engine = engine
        self.dispatch = dispatch
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._callbacks: dict[str, Callback] = {}
        self._stop = threading.Event()
        self.error: str | None = None  # set when a step raised: the engine is unusable from then on
        self.snapshot: dict = dict(engine.stats())  # refreshed by the engine thread after every step
        self.facts = engine_facts(engine)
        self.num_steps = 0
        self._thread = threading.Thread(target=self._run, name="nanotune-engine", daemon=True)

    def start(self) -> EngineLoop:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._commands.put(("wake", None, None, None))
        self._thread.join(timeout)

    # ---- called from the HTTP side ------------------------------------------------------------------
    def add(self, request_id: str, prompt_ids: list[int], params: SamplingParams, callback: Callback) -> None:
        self._commands.put(("add", request_id, (prompt_ids, params), callback))

    def abort(self, request_id: str) -> None:
        self._commands.put(("abort", request_id, None, None))

    # ---- the engine thread --------------------------------------------------------------------------
    def _apply(self, cmd) -> None:
        kind, rid, args, callback = cmd
        if kind == "add":
            try:
                self.engine.add_request(args[0], args[1], request_id=rid)
            except ValueError as e:  # cannot fit this engine (too long, bad token): that request fails
                self.dispatch([(callback, EngineEvent([], True, None, error=str(e)))])
                return
            self._callbacks[rid] = callback
        elif kind == "abort" and self._callbacks.pop(rid, None) is not None:
            self.engine.abort(rid)

    def _drain(self, block: bool) -> None:
        try:
            cmd = self._commands.get(timeout=IDLE_WAIT_S) if block else self._commands.get_nowait()
            while True:
                self._apply(cmd)
                cmd = self._commands.get_nowait()
        except queue.Empty:
            pass

    def _run(self) -> None:
        while not self._stop.is_set():
            self._drain(block=not self.engine.has_unfinished())
            if not self.engine.has_unfinished():
                self._refresh()  # aborts free KV without a step
                continue
            try:
                outputs: list[RequestOutput] = self.engine.step()
            except Exception as e:  # the engine broke: every request in it fails with the reason
                self.error = f"{type(e).__name__}: {e}"
                self.dispatch([(cb, EngineEvent([], True, None, error=self.error)) for cb in self._callbacks.values()])
                self._callbacks.clear()
                return
            self.num_steps += 1
            pairs = []
            for out in outputs:
                cb = self._callbacks.get(out.request_id)
                if cb is None:
                    continue  # aborted meanwhile
                if out.is_finished:
                    del self._callbacks[out.request_id]
                pairs.append((cb, EngineEvent(list(out.new_token_ids), out.is_finished, out.finish_reason)))
            if pairs:
                self.dispatch(pairs)
            self._refresh()

    def _refresh(self) -> None:
        """After each step (and each idle wait): the stats snapshot. The engine process's loop also sends
        the step's events from here (nanotune.serve.engine_process)."""
        self.snapshot = dict(self.engine.stats())
