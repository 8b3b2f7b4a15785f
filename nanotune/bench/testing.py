"""Deterministic stand-ins for tests and examples: a fake engine speaking the engine's protocol and a
trace-like object, so the benchmark harness can be exercised without a model (or before the engine's
latest change lands)."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from engine.request import RequestOutput, SamplingParams


@dataclass(frozen=True)
class FakeTraceRequest:
    arrival_s: float
    prompt_len: int
    output_len: int
    prompt_ids: tuple[int, ...] | None = None


@dataclass
class FakeTrace:
    requests: list[FakeTraceRequest]
    meta: dict = field(default_factory=lambda: {"source": "fake"})


def fake_trace(lengths: list[tuple[int, int]], gap_s: float = 0.0) -> FakeTrace:
    """Requests of the given (prompt_len, output_len), arriving `gap_s` apart."""
    return FakeTrace([FakeTraceRequest(i * gap_s, p, o) for i, (p, o) in enumerate(lengths)])


@dataclass(frozen=True)
class FakeModelConfig:
    name: str = "fake-model"
    num_params: int = 1_000_000


class FakeEngine:
    """Continuous batching in miniature: up to `max_num_seqs` requests run; each `step()` admits waiting
    requests (their prefill yields their first token in that step), gives every running request one token,
    and sleeps `step_s + per_token_s * tokens` to stand for GPU time. `fail_at_step` raises RuntimeError and
    `interrupt_at_step` KeyboardInterrupt from inside step() (as a Ctrl-C landing in the engine would);
    prompts longer than `max_prompt_len` are refused by add_request with ValueError."""

    def __init__(self, max_num_seqs: int = 8, step_s: float = 0.001, per_token_s: float = 0.0,
                 vocab_size: int = 1000, fail_at_step: int | None = None,
                 interrupt_at_step: int | None = None, max_prompt_len: int | None = None) -> None:
        self.max_num_seqs = max_num_seqs
        self.step_s, self.per_token_s = step_s, per_token_s
        self.vocab_size = vocab_size
        self.model_config = FakeModelConfig()
        self.fail_at_step, self.interrupt_at_step = fail_at_step, interrupt_at_step
        self.max_prompt_len = max_prompt_len
        self.waiting: deque[tuple[str, list[int], SamplingParams]] = deque()
        self.running: dict[str, list] = {}  # id -> [prompt_len, max_tokens, generated]
        self.num_steps = 0
        self.prompts: dict[str, list[int]] = {}
        self._next_id = 0

    def add_request(self, prompt_ids: list[int], params: SamplingParams,
                    request_id: str | None = None) -> str:
        if self.max_prompt_len is not None and len(prompt_ids) > self.max_prompt_len:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens exceeds {self.max_prompt_len}")
        if not all(0 <= t < self.vocab_size for t in prompt_ids):
            raise ValueError("prompt id out of vocabulary")
        if request_id is None:
            request_id, self._next_id = str(self._next_id), self._next_id + 1
        self.waiting.append((request_id, list(prompt_ids), params))
        self.prompts[request_id] = list(prompt_ids)
        return request_id

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def step(self) -> list[RequestOutput]:
        self.num_steps += 1
        if self.num_steps == self.fail_at_step:
            raise RuntimeError("fake engine failure")
        if self.num_steps == self.interrupt_at_step:
            raise KeyboardInterrupt
        num_tokens = 0
        while self.waiting and len(self.running) < self.max_num_seqs:
            rid, prompt, params = self.waiting.popleft()
            self.running[rid] = [len(prompt), params.max_tokens, 0]
            num_tokens += len(prompt)
        outputs = []
        for rid, state in list(self.running.items()):
            state[2] += 1
            num_tokens += 1
            is_done = state[2] >= state[1]
            outputs.append(RequestOutput(rid, [state[2] % self.vocab_size], is_done,
                                         "length" if is_done else None, state[2]))
            if is_done:
                del self.running[rid]
        time.sleep(self.step_s + self.per_token_s * num_tokens)
        return outputs

    def stats(self) -> dict:
        return {"num_running": len(self.running), "num_waiting": len(self.waiting),
                "kv_usage": len(self.running) / self.max_num_seqs, "num_preemptions": 0}
