"""What one benchmark request is (`BenchRequest`) and what was measured about it (`RequestRecord`).

All times are seconds on `time.perf_counter()`'s clock relative to the start of the measured run (t0), so
records from the engine, the Hugging Face peer (which stamps tokens with perf_counter too) and the HTTP
client are on one clock.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

# Status of a record once the run is over.
OK = "ok"  # finished; counted in `completed`
FAILED = "failed"  # the backend reported an error; counted in `failed` with the error kept
INTERRUPTED = "interrupted"  # sent, but the run was stopped (Ctrl-C) before it finished
NOT_SENT = "not_sent"  # the run was stopped before this request's turn
RUNNING = "running"  # sent, not finished yet (only while a run is in progress)


@dataclass(frozen=True)
class BenchRequest:
    """One request to replay: prompt token ids and the output length to force (ignore EOS)."""

    index: int
    arrival_s: float  # scheduled arrival, relative to t0 (0 for every request in offline mode)
    prompt_ids: tuple[int, ...]
    output_len: int

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    @property
    def request_id(self) -> str:
        return f"req-{self.index}" if self.index >= 0 else f"warmup-{-self.index}"


@dataclass
class RequestRecord:
    """Measurements of one request. The client queue time (arrival -> send: waiting for a --max-concurrency
    slot or a client thread) is kept apart from TTFT, which like vLLM's is measured from the send."""

    request_id: str
    prompt_len: int
    expected_output_len: int
    arrival_s: float
    due_s: float | None = None  # when the driver could first send it: arrival, or a --max-concurrency slot freed
    send_s: float | None = None
    first_token_s: float | None = None
    token_times: list[float] = field(default_factory=list)  # one per token or per streamed chunk
    end_s: float | None = None
    output_len: int = 0  # tokens generated (for an endpoint: its reported usage, else chunks)
    error: str | None = None
    status: str = NOT_SENT
    generated_text: str = ""  # what an endpoint streamed back (vLLM's generated_texts); not in the CSV

    @classmethod
    def for_request(cls, req: BenchRequest) -> RequestRecord:
        return cls(request_id=req.request_id, prompt_len=req.prompt_len,
                   expected_output_len=req.output_len, arrival_s=req.arrival_s)

    # ---- what the backends call -------------------------------------------------------------------
    def add_tokens(self, t: float, num_tokens: int = 1) -> None:
        """`num_tokens` tokens (one engine step's, or one streamed chunk's) became visible at time t."""
        if self.first_token_s is None:
            self.first_token_s = t
        self.token_times.append(t)
        self.output_len += num_tokens

    def finish(self, t: float) -> None:
        self.end_s = t
        self.status = OK

    def fail(self, t: float, error: str) -> None:
        self.end_s = t
        self.error = error
        self.status = FAILED

    # ---- derived -------------------------------------------------------------------------------------
    @property
    def is_ok(self) -> bool:
        return self.status == OK

    @property
    def is_short(self) -> bool:
        """Came back with fewer tokens than asked: a server that ignored `ignore_eos`/`min_tokens`, or a
        stop condition; its latency and throughput would not be comparable, so it is flagged."""
        return self.is_ok and self.output_len < self.expected_output_len

    @property
    def queue_s(self) -> float | None:
        return None if self.send_s is None else self.send_s - self.arrival_s

    @property
    def ttft_s(self) -> float | None:
        if self.send_s is None or self.first_token_s is None:
            return None
        return self.first_token_s - self.send_s

    @property
    def e2el_s(self) -> float | None:
        if self.send_s is None or self.end_s is None:
            return None
        return self.end_s - self.send_s

    @property
    def tpot_s(self) -> float | None:
        """vLLM's TPOT: (e2e - ttft) / (output_len - 1); undefined for a one-token output."""
        if self.output_len < 2 or self.ttft_s is None or self.e2el_s is None:
            return None
        return (self.e2el_s - self.ttft_s) / (self.output_len - 1)

    @property
    def itls_s(self) -> list[float]:
        """Gaps between consecutive token (or chunk) arrivals, like vLLM's `itl` list."""
        t = self.token_times
        return [b - a for a, b in itertools.pairwise(t)]

    def to_row(self) -> dict:
        """One CSV row (times in s relative to t0, latencies in ms)."""
        ms = lambda v: None if v is None else v * 1e3
        itls = self.itls_s
        return {
            "request_id": self.request_id, "status": self.status, "prompt_len": self.prompt_len,
            "expected_output_len": self.expected_output_len, "output_len": self.output_len,
            "is_short": self.is_short, "arrival_s": self.arrival_s, "send_s": self.send_s,
            "first_token_s": self.first_token_s, "end_s": self.end_s, "queue_ms": ms(self.queue_s),
            "ttft_ms": ms(self.ttft_s), "tpot_ms": ms(self.tpot_s), "e2el_ms": ms(self.e2el_s),
            "mean_itl_ms": ms(sum(itls) / len(itls)) if itls else None,
            "max_itl_ms": ms(max(itls)) if itls else None, "num_chunks": len(self.token_times),
            "error": self.error,
        }
