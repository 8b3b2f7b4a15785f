"""Rank 0 sends its engine calls; ranks > 0 replay them (engine/parallel/launch.py says why).

A message is a header, int64 [2] = (payload bytes, timed step flag), then, when the payload is not empty, the
pickled commands as uint8 [payload bytes]: a plain step (nothing added) costs one 16-byte broadcast. Commands:
  ("add", prompt_ids, SamplingParams, request_id)   a request rank 0 accepted since the last message
  ("step", timed)                                   one LLMEngine.step (timed: with per-op timings)
  ("plan", PipelinePlan)                            LLMEngine.set_plan
  ("abort", request_id)                             LLMEngine.abort (sent with the next message, like "add")
  ("stop",)                                         leave the loop
"""

from __future__ import annotations

import pickle
import time

import torch
import torch.distributed as dist

from engine.parallel.comm import TPGroup
from engine.parallel.launch import TPWorkerError, Workers


class Driver:
    """Rank 0's side: queue the calls, send them before each step runs."""

    def __init__(self, tp: TPGroup, workers: Workers):
        self.tp, self.workers = tp, workers
        self.pending: list[tuple] = []
        self.send_s = 0.0  # host time spent sending (the scheduling choice's cost per step)
        self.num_sends = 0
        self.closed = False

    def add(self, prompt_ids, params, request_id: str) -> None:
        self.pending.append(("add", list(prompt_ids), params, request_id))

    def abort(self, request_id: str) -> None:
        self.pending.append(("abort", request_id))

    def send(self, *cmd) -> None:
        msg, self.pending = [*self.pending, cmd], []
        t = time.perf_counter()
        try:
            _broadcast(msg, self.tp.cpu_group)
        except Exception as e:
            raise self.failure(e) from None
        self.send_s += time.perf_counter() - t
        self.num_sends += 1

    def failure(self, e: BaseException) -> TPWorkerError:
        line = self.workers.failure()
        first = str(e).splitlines()[0] if str(e) else ""
        return TPWorkerError(line or f"tensor-parallel collective failed on rank 0: {type(e).__name__}: {first}")

    def close(self) -> None:
        """Tell the ranks to stop, wait for them, leave the process group."""
        if self.closed:
            return
        self.closed = True
        try:
            self.send("stop")
        except TPWorkerError:
            pass
        self.workers.close()


def follow(engine, tp: TPGroup) -> None:
    """Ranks > 0: replay rank 0's calls until "stop"."""
    while True:
        for cmd in _receive(tp.cpu_group):
            if cmd[0] == "add":
                engine.add_request(cmd[1], cmd[2], request_id=cmd[3])
            elif cmd[0] == "step":
                engine.step([] if cmd[1] else None)
            elif cmd[0] == "plan":
                engine.set_plan(cmd[1])
            elif cmd[0] == "abort":
                engine.abort(cmd[1])
            elif cmd[0] == "stop":
                return


def _broadcast(msg: list[tuple], group) -> None:
    if len(msg) == 1 and msg[0][0] == "step":  # the common case: no payload
        dist.broadcast(torch.tensor([0, int(msg[0][1])], dtype=torch.int64), src=0, group=group)
        return
    data = pickle.dumps(msg)
    dist.broadcast(torch.tensor([len(data), 0], dtype=torch.int64), src=0, group=group)
    dist.broadcast(torch.frombuffer(bytearray(data), dtype=torch.uint8), src=0, group=group)


def _receive(group) -> list[tuple]:
    head = torch.empty(2, dtype=torch.int64)
    dist.broadcast(head, src=0, group=group)
    size, timed = int(head[0]), bool(head[1])
    if size == 0:
        return [("step", timed)]
    buf = torch.empty(size, dtype=torch.uint8)
    dist.broadcast(buf, src=0, group=group)
    return pickle.loads(buf.numpy().tobytes())
