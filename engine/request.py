"""Requests and their sampling parameters: plain Python, no torch (the scheduler works on these)."""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop.

    ignore_eos=True is benchmark mode: exactly max_tokens tokens are generated, EOS or not.
    temperature == 0 means greedy; top_k <= 0 and top_p >= 1 disable those filters.
    """

    max_tokens: int = 16
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self):
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0


class RequestStatus(enum.Enum):
    WAITING = "waiting"  # not admitted, or preempted (its KV dropped; recomputed on re-admission)
    RUNNING = "running"
    FINISHED = "finished"


_ids = itertools.count()

# An output slot whose token is still on the GPU (async scheduling: the next iteration is scheduled
# before this one's sampled tokens reach the host; its decode input is read on the device).
PENDING_TOKEN = -1


@dataclass(eq=False)
class Request:
    """One sequence: its prompt, the tokens generated so far, and how far its KV cache is filled."""

    prompt_ids: list[int]
    params: SamplingParams
    request_id: str = field(default_factory=lambda: str(next(_ids)))
    output_ids: list[int] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    num_computed_tokens: int = 0  # tokens whose KV is in the cache
    block_ids: list[int] = field(default_factory=list)
    num_preemptions: int = 0
    finish_reason: str | None = None  # "length" | "stop" | "abort" (the client went away)
    num_resolved: int = 0  # output_ids[:num_resolved] are known tokens; the rest are PENDING_TOKEN

    @property
    def has_pending(self) -> bool:
        return len(self.output_ids) > self.num_resolved

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def max_total_tokens(self) -> int:
        """The most tokens this request can ever hold in the cache (prompt + every output token but the last)."""
        return self.num_prompt_tokens + self.params.max_tokens - 1

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED


@dataclass
class RequestOutput:
    """What one engine step produced for one request."""

    request_id: str
    new_token_ids: list[int]
    is_finished: bool
    finish_reason: str | None = None
    num_output_tokens: int = 0
