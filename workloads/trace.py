"""A trace: requests (arrival time, prompt length, output length, optional prompt ids) plus metadata.

On disk a trace is JSON Lines: the first line is `{"meta": {...}}` (source, generator and parameters,
seed, count, filter, arrivals), every other line one request with the keys `arrival_s`, `prompt_len`,
`output_len` and, when known, `prompt_ids`. JSONL because a trace of a million requests streams and
diffs line by line, and the header keeps the provenance with the data.

Traces are treated as values: filters and arrival processes return a new `Trace` with a new meta dict
rather than editing one in place.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from workloads.errors import TraceError
from workloads.parsing import as_length, as_seconds, fail, iter_jsonl, require


@dataclass(frozen=True)
class TraceRequest:
    """One request. arrival_s is seconds after the trace starts (0 for every request of an offline trace)."""

    arrival_s: float
    prompt_len: int
    output_len: int
    prompt_ids: tuple[int, ...] | None = None

    def to_json(self) -> dict:
        row: dict = {
            "arrival_s": self.arrival_s,
            "prompt_len": self.prompt_len,
            "output_len": self.output_len,
        }
        if self.prompt_ids is not None:
            row["prompt_ids"] = list(self.prompt_ids)
        return row


@dataclass
class Trace:
    """Requests in arrival order plus the metadata that says where they came from."""

    requests: list[TraceRequest]
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.requests)

    @property
    def prompt_lens(self) -> np.ndarray:
        return np.array([r.prompt_len for r in self.requests], dtype=np.int64)

    @property
    def output_lens(self) -> np.ndarray:
        return np.array([r.output_len for r in self.requests], dtype=np.int64)

    @property
    def arrivals(self) -> np.ndarray:
        return np.array([r.arrival_s for r in self.requests], dtype=np.float64)

    @property
    def is_timed(self) -> bool:
        """True when requests carry real arrival times, False for an offline trace (all at t=0)."""
        return any(r.arrival_s > 0 for r in self.requests)

    def with_meta(self, **updates) -> Trace:
        """The same requests with meta keys added or replaced (the original trace is left as it was)."""
        return Trace(list(self.requests), {**self.meta, **updates})

    def head(self, n: int | None) -> Trace:
        """The first n requests (all of them when n is None); meta["first_n"] records a cut."""
        if n is None or n >= len(self.requests):
            return Trace(list(self.requests), {**self.meta, "count": len(self.requests)})
        return Trace(self.requests[:n], {**self.meta, "count": n, "first_n": n})


def _jsonable(value):
    """Meta may hold numpy scalars or tuples; JSON wants plain Python."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_jsonl(trace: Trace, path: str | Path) -> Path:
    """Write the trace atomically (a temp file in the same folder, then os.replace): no reader sees half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = _jsonable({**trace.meta, "count": len(trace)})
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps({"meta": meta}, default=str) + "\n")  # str: paths and the like
            for request in trace.requests:
                f.write(json.dumps(request.to_json()) + "\n")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a trace is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_jsonl(path: str | Path) -> Trace:
    """Read a trace written by `save_jsonl` (the meta line may be missing: then meta is empty)."""
    text = Path(path).read_text(encoding="utf-8")
    return parse_jsonl(text, path)


def parse_jsonl(text: str, path: str | Path) -> Trace:
    """Parse our JSONL from text; `path` is only used in error messages."""
    meta: dict = {}
    requests: list[TraceRequest] = []
    for line, obj in iter_jsonl(path, text):
        if isinstance(obj, dict) and "meta" in obj and not requests and not meta:
            if not isinstance(obj["meta"], dict):
                raise fail(path, line, "expected a JSON object", "meta")
            meta = dict(obj["meta"])
            continue
        requests.append(_request(obj, path, line))
    if not requests and not meta:
        raise TraceError(f"{path}: empty file (expected a meta line and one request per line)")
    return Trace(requests, {**meta, "count": len(requests)})


def _request(obj: object, path: str | Path, line: int) -> TraceRequest:
    arrival = as_seconds(require(obj, "arrival_s", path, line), path, line, "arrival_s")
    prompt_len = as_length(require(obj, "prompt_len", path, line), path, line, "prompt_len")
    output_len = as_length(require(obj, "output_len", path, line), path, line, "output_len")
    ids = obj.get("prompt_ids")  # type: ignore[union-attr]
    if ids is not None:
        if not isinstance(ids, list):
            raise fail(path, line, f"expected a list of token ids, got {type(ids).__name__}", "prompt_ids")
        ids = tuple(as_length(i, path, line, "prompt_ids") for i in ids)
        if len(ids) != prompt_len:
            raise fail(path, line, f"has {len(ids)} ids but prompt_len is {prompt_len}", "prompt_ids")
    return TraceRequest(arrival, prompt_len, output_len, ids)
