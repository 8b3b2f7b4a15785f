"""The engine in its own process (as vLLM's engine core does it), so that the HTTP process's Python (JSON
encoding and one write per stream per step) never holds the GIL the engine's step loop needs.

    server process                                   engine process (spawned: CUDA must not be forked)
    add / abort / stop  -- command queue -->          EngineLoop over the LLMEngine it built itself from the
                                                      EngineConfig (an engine is never pickled)
    reader thread  <-- one message per step --        [(request_id, token_ids, finished, finish_reason, error)]
      -> dispatch(pairs): one event-loop wake-up         + engine.stats() + the step count

EngineProcess has the interface the Server uses from EngineLoop (add, abort, start, stop, error, snapshot,
num_steps, dispatch, facts). The child runs EngineLoop itself (a subclass whose dispatch buffers the step's
events and whose snapshot refresh sends them), so there is one step loop, not two.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import traceback

from nanotune.serve.loop import Callback, EngineEvent, EngineLoop, call_each, engine_facts

READY_POLL_S = 1.0  # how often the parent looks whether a child that has not answered yet is still alive
# Room for many steps' messages in the child->parent pipe (Linux's default is 64 KiB, about two steps of 512
# requests' events): a reader thread held up by the server's GIL must not make the engine's send() wait.
PIPE_BYTES = 1 << 20
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux), named in the fcntl module only from Python 3.10 on Linux


def _widen_pipe(conn) -> None:
    try:
        import fcntl

        fcntl.fcntl(conn.fileno(), getattr(fcntl, "F_SETPIPE_SZ", F_SETPIPE_SZ), PIPE_BYTES)
    except (ImportError, OSError):
        pass  # not Linux, or above /proc/sys/fs/pipe-max-size: the default pipe still works, with less slack


class EngineProcessError(RuntimeError):
    """The engine process failed to start for a reason that is not a bad configuration (its traceback is
    in the server's stderr, printed by the child)."""


# ---- the child --------------------------------------------------------------------------------------------
class _ChildLoop(EngineLoop):
    """EngineLoop in the engine process: its commands come from the parent's queue (the same
    (kind, request_id, args, callback) tuples, with the request id as the callback) and every refresh
    sends the events dispatched since the last one, with the stats, as ONE message."""

    def __init__(self, engine, commands, out) -> None:
        super().__init__(engine, dispatch=self._buffer)
        self._commands = commands  # multiprocessing.Queue: get(timeout) / get_nowait() like queue.SimpleQueue
        self._out = out
        self._events: list[tuple] = []
        self._sent: dict | None = None

    def _buffer(self, pairs) -> None:
        self._events.extend((rid, ev.token_ids, ev.is_finished, ev.finish_reason, ev.error) for rid, ev in pairs)

    def _apply(self, cmd) -> None:
        if cmd[0] == "stop":
            self._stop.set()
        else:
            super()._apply(cmd)

    def _refresh(self) -> None:
        super()._refresh()
        if self._events or self.snapshot != self._sent:  # an idle wait with nothing new sends nothing
            self._out.send(("step", self._events, self.snapshot, self.num_steps))
            self._events, self._sent = [], self.snapshot


def _exit_with_parent(lifeline) -> None:
    """The parent holds the only write end: EOF means it died (even by SIGKILL), so this process goes too."""
    try:
        lifeline.recv()
    except (EOFError, OSError):
        pass
    os._exit(1)


def _child_main(config, commands, out, lifeline) -> None:
    # Ctrl-C in a terminal reaches the whole process group: the server stops this process itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(lifeline,), name="nanotune-lifeline", daemon=True).start()
    from engine import LLMEngine
    from engine.errors import EngineConfigError

    try:
        engine = LLMEngine(config)
    except (EngineConfigError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
        out.send(("failed", "user", e))  # the parent raises it again: the CLI's one-line paths for bad input
        return
    except Exception as e:
        traceback.print_exc()
        out.send(("failed", "crash", f"{type(e).__name__}: {e}".splitlines()[0]))
        return
    try:
        loop = _ChildLoop(engine, commands, out)
        # SIGTERM (the parent's terminate(), or a service manager signalling the whole group) stops the loop
        # like the parent's stop command: the step finishes and the engine closes (its TP ranks with it)
        signal.signal(signal.SIGTERM, lambda *_: loop._stop.set())
        out.send(("ready", engine_facts(engine), loop.snapshot))
        loop._run()
        if loop.error:
            out.send(("error", loop.error))
    except (BrokenPipeError, EOFError, OSError):
        pass  # the parent went away
    finally:
        close = getattr(engine, "close", None)  # tensor parallelism: end the ranks this engine started
        if close is not None:
            close()


# ---- the parent -------------------------------------------------------------------------------------------
class EngineProcess:
    """Starts the engine process and waits until its engine is built (the child's EngineConfigError or
    file error raised again here when it refused the configuration, EngineProcessError when it failed
    otherwise); `start()` then starts the
    reader thread that turns each step's message into parent-side callbacks, through `dispatch`."""

    def __init__(self, config, dispatch=call_each) -> None:
        ctx = mp.get_context("spawn")
        self.dispatch = dispatch
        self.error: str | None = None  # set when the engine broke or its process died
        self.num_steps = 0
        self._callbacks: dict[str, Callback] = {}
        self._stopping = False
        self._commands = ctx.Queue()  # put() never blocks the event loop: a feeder thread writes the pipe
        self._conn, child_out = ctx.Pipe(duplex=False)
        _widen_pipe(self._conn)
        child_life, self._lifeline = ctx.Pipe(duplex=False)
        # A daemonic process may not start processes: under tensor parallelism the child spawns its ranks,
        # so it is not daemonic there and stop() (and the lifeline) end it.
        self._proc = ctx.Process(target=_child_main, args=(config, self._commands, child_out, child_life),
                                 name="nanotune-engine", daemon=int(getattr(config, "tp", 1) or 1) <= 1)
        self._proc.start()
        child_out.close()  # else the parent's own copy keeps the pipe open and a dead child is never seen
        child_life.close()
        self._thread = threading.Thread(target=self._read, name="nanotune-engine-reader", daemon=True)
        try:
            self.facts, self.snapshot = self._wait_ready()
        except BaseException:
            self._end_process(timeout=0)
            raise

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def _wait_ready(self) -> tuple[dict, dict]:
        while not self._conn.poll(READY_POLL_S):
            if not self._proc.is_alive():
                raise EngineProcessError(f"the engine process exited while building the engine (exit code "
                                         f"{self._proc.exitcode})")
        try:
            msg = self._conn.recv()
        except EOFError:
            self._proc.join(5)
            raise EngineProcessError(f"the engine process exited while building the engine (exit code "
                                     f"{self._proc.exitcode})") from None
        if msg[0] == "failed":
            self._proc.join(10)
            if msg[1] == "user":
                raise msg[2]
            raise EngineProcessError(f"the engine process failed to build the engine: {msg[2]}")
        _, facts, snapshot = msg
        return facts, snapshot

    def start(self) -> EngineProcess:
        self._thread.start()
        return self

    # ---- called from the HTTP side ------------------------------------------------------------------
    def add(self, request_id: str, prompt_ids: list[int], params, callback: Callback) -> None:
        self._callbacks[request_id] = callback
        if self.error:  # dead already: whoever pops the callback (here or the reader) fails it
            if self._callbacks.pop(request_id, None) is not None:
                self.dispatch([(callback, EngineEvent([], True, None, error=self.error))])
            return
        self._commands.put(("add", request_id, (prompt_ids, params), request_id))

    def abort(self, request_id: str) -> None:
        if self._callbacks.pop(request_id, None) is not None and not self.error:
            self._commands.put(("abort", request_id, None, None))

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        if self._proc.is_alive():
            self._commands.put(("stop", None, None, None))
        self._end_process(timeout)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _end_process(self, timeout: float) -> None:
        self._proc.join(timeout)
        for end in (self._proc.terminate, self._proc.kill):
            if self._proc.is_alive():
                end()
                self._proc.join(5)
        self._commands.close()
        self._commands.cancel_join_thread()  # a dead child never drains it: do not wait on it at exit
        self._lifeline.close()

    # ---- the reader thread --------------------------------------------------------------------------
    def _read(self) -> None:
        try:
            while True:
                msg = self._conn.recv()
                if msg[0] == "error":  # a step raised: the engine is unusable and its process ends
                    self._fail(msg[1])
                    return
                _, events, self.snapshot, self.num_steps = msg
                pairs = []
                for rid, token_ids, is_finished, reason, error in events:
                    cb = self._callbacks.pop(rid, None) if is_finished else self._callbacks.get(rid)
                    if cb is not None:  # else aborted meanwhile
                        pairs.append((cb, EngineEvent(token_ids, is_finished, reason, error)))
                if pairs:
                    self.dispatch(pairs)
        except (EOFError, OSError):
            if self._stopping:
                return
            self._proc.join(5)
            self._fail(f"the engine process exited (exit code {self._proc.exitcode})")

    def _fail(self, reason: str) -> None:
        self.error = reason
        failed = [(cb, EngineEvent([], True, None, error=reason))
                  for cb in (self._callbacks.pop(rid, None) for rid in list(self._callbacks)) if cb is not None]
        if failed and not self._stopping:
            self.dispatch(failed)
