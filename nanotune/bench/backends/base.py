"""The one interface the benchmark driver talks to, whatever serves the requests.

The driver owns time and admission (arrivals, --max-concurrency); a backend only has to accept a request
(`submit`) and hand back the records that ended since it was last asked (`poll`). That shape fits all
three kinds of server: the in-process engine advances one `step()` per poll, the Hugging Face peer and the
HTTP client run in their own threads and poll just collects what they finished.
"""

from __future__ import annotations

import time

from nanotune.bench.records import BenchRequest, RequestRecord


class Backend:
    """Base class: subclasses implement submit/poll and fill the record's times relative to `t0`."""

    name = "backend"
    num_params: int | None = None  # parameters per GPU, for the optimum (None: unknown -> no efficiency)
    vocab_size: int = 32000

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def begin(self, t0: float) -> None:
        """A new measured phase starts at perf_counter() == t0 (warm-up, then each run)."""
        self.t0 = t0

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def describe(self) -> dict:
        """What ran: engine name, model, plan, settings. Goes into result.json under `engine`."""
        return {"engine": self.name}

    def submit(self, req: BenchRequest, rec: RequestRecord) -> None:
        raise NotImplementedError

    def poll(self, timeout: float) -> list[RequestRecord]:
        """Records that finished or failed since the last call; may block up to `timeout` seconds (the
        in-process engine instead runs one step)."""
        raise NotImplementedError

    def phase_stats(self) -> dict:
        """Backend-side figures of the phase since `begin` (the engine: measured iteration times), kept
        per run in result.json next to the client-side metrics."""
        return {}

    def stats(self) -> dict:
        """Live numbers for the progress view (num_running, num_waiting, kv_usage, num_preemptions)."""
        return {}

    def abort(self) -> None:
        """Stop serving in-flight requests as fast as possible (Ctrl-C or a crash); records may be left
        unfinished. The driver marks them afterwards."""

    def close(self) -> None:
        """Release the model / threads / connections."""
