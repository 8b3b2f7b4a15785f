"""Read the trace files users bring, in any supported format, into a `Trace`.

- `jsonl`: ours, `{"meta": ...}` then `{"arrival_s", "prompt_len", "output_len"[, "prompt_ids"]}` per line.
- `sharegpt`: ShareGPT JSON `[{"id", "conversations": [{"from", "value"}]}]` (text; offline).
- `lmsys`: LMSYS-Chat-1M, JSON or JSONL of `{"conversation": [{"role", "content"}]}` (text; offline).
- `azure` (alias `splitwise`): Azure / Splitwise CSV `TIMESTAMP,ContextTokens,GeneratedTokens`; a
  `YYYY-MM-DD HH:MM:SS.fffffff` time stamp per request, or `XXX` for none (then offline).
- `burstgpt`: BurstGPT CSV `Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type`,
  time stamps in seconds; failed requests have 0 response tokens: dropped, as vLLM's reader drops them,
  and counted in meta["num_failed"].
- `mooncake`: Mooncake JSONL `{"timestamp" (ms), "input_length", "output_length", "hash_ids"}`
  (hash_ids, the prefix-cache block hashes, are not kept).

`auto` (the default) looks at the content (CSV header, or the keys of the first JSON record) and so works
whatever the file is called. Real timestamps become arrivals in seconds after the earliest request, and
requests are put in arrival order (a stable sort: equal times keep file order).
"""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import datetime, timezone
from pathlib import Path

from workloads.conversations import read_lmsys, read_sharegpt
from workloads.errors import TraceError
from workloads.parsing import as_length, as_seconds, fail, iter_json_array, iter_jsonl, require
from workloads.tokens import TokenCounter
from workloads.trace import Trace, TraceRequest, parse_jsonl

FORMATS = ("jsonl", "sharegpt", "lmsys", "azure", "burstgpt", "mooncake")
ALIASES = {"splitwise": "azure", "nanotune": "jsonl"}
TEXT_FORMATS = ("sharegpt", "lmsys")
"""Formats holding text (token counts come from a tokenizer or the approximation)."""

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
BURSTGPT_COLUMNS = ("Timestamp", "Request tokens", "Response tokens")
OFFLINE_STAMPS = frozenset({"XXX", ""})
"""Timestamp cells meaning "no arrival time" (the NanoFlow length traces write XXX)."""


def read_trace(path: str | Path, fmt: str = "auto", tokenizer: str | Path | None = None) -> Trace:
    """Read `path` in format `fmt` (or detected).

    `tokenizer` is a local Hugging Face tokenizer folder, used by the text formats (see workloads.tokens).
    """
    text = _read_text(path)
    fmt = detect_format(path, text) if fmt == "auto" else normalize_format(fmt)
    if fmt in TEXT_FORMATS:
        reader = read_sharegpt if fmt == "sharegpt" else read_lmsys
        return reader(path, text, TokenCounter(tokenizer))
    if fmt == "jsonl":
        trace = parse_jsonl(text, path)
        return trace.with_meta(source=trace.meta.get("source", str(path)), format="jsonl")
    return {"azure": _read_azure, "burstgpt": _read_burstgpt, "mooncake": _read_mooncake}[fmt](path, text)


def normalize_format(fmt: str) -> str:
    fmt = ALIASES.get(fmt.lower(), fmt.lower())
    if fmt not in FORMATS:
        names = ", ".join(("auto", *FORMATS, *ALIASES))
        raise TraceError(f"unknown trace format '{fmt}': expected one of {names}")
    return fmt


def detect_format(path: str | Path, text: str) -> str:
    """The format of `text`, from its first record; an error names what was seen."""
    head = text.lstrip()
    if not head:
        raise TraceError(f"{path}: empty file")
    first_line = head.splitlines()[0]
    if head[0] == "[":
        return _format_of_record(path, _first_array_element(path, text), 1)
    if head[0] == "{":
        try:
            record = json.loads(first_line)
        except json.JSONDecodeError:
            raise fail(path, 1, "invalid JSON on the first line; cannot tell the format") from None
        return _format_of_record(path, record, 1)
    columns = next(csv.reader([first_line]))
    if all(c in columns for c in AZURE_COLUMNS):
        return "azure"
    if all(c in columns for c in BURSTGPT_COLUMNS):
        return "burstgpt"
    raise fail(
        path,
        1,
        f"unknown format: CSV header {first_line[:60]!r} is neither Azure/Splitwise "
        f"({','.join(AZURE_COLUMNS)}) nor BurstGPT ({','.join(BURSTGPT_COLUMNS)}); "
        "JSON would start with [ or {",
    )


def _format_of_record(path, record, line: int) -> str:
    keys = set(record) if isinstance(record, dict) else set()
    for fmt, key in (
        ("jsonl", "meta"),
        ("jsonl", "prompt_len"),
        ("mooncake", "input_length"),
        ("sharegpt", "conversations"),
        ("lmsys", "conversation"),
    ):
        if key in keys:
            return fmt
    shown = ", ".join(sorted(keys)[:6]) or type(record).__name__
    raise fail(path, line, f"unknown format: first record has {shown}; pass the format explicitly")


def _first_array_element(path, text: str):
    """The first element of a JSON array, with the reader's own errors (a truncated file says so)."""
    for _, element in iter_json_array(path, text):
        return element
    raise TraceError(f"{path}: empty JSON array (no records)")


def _read_text(path: str | Path) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise TraceError(f"{path}: not UTF-8 text (byte {e.start}); trace files are text") from None
    if not text.strip():
        raise TraceError(f"{path}: empty file")
    return text


def _csv_rows(path, text: str, required: tuple[str, ...]):
    """(line, {column: cell}) for each data row, after checking the header names the required columns."""
    reader = csv.reader(io.StringIO(text))
    header = [c.strip() for c in next(reader)]
    for column in required:
        if column not in header:
            raise fail(path, 1, f"missing column (header is {','.join(header)[:80]})", column)
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        for column in required:
            if header.index(column) >= len(row):
                raise fail(path, line, "missing (row has too few cells)", column)
        yield line, {name: cell.strip() for name, cell in zip(header, row, strict=False)}


_STAMP = re.compile(r"^(?P<base>\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d)(?P<frac>\.\d+)?(?P<tz>Z|[+-]\d\d:?\d\d)?$")


def _parse_stamp(cell: str, path, line: int, field: str) -> float:
    """Seconds since the epoch of 'YYYY-MM-DD HH:MM:SS[.fffffff][+HH:MM]' (any number of digits: Azure
    writes seven, which datetime will not parse), or of a plain number of seconds."""
    match = _STAMP.match(cell)
    if match is None:
        return as_seconds(cell, path, line, field)
    stamp = datetime.fromisoformat(match["base"] + (match["tz"] or "").replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.timestamp() + float(match["frac"] or 0.0)


def _read_azure(path, text: str) -> Trace:
    rows = []
    for line, row in _csv_rows(path, text, AZURE_COLUMNS):
        cell = row["TIMESTAMP"]
        stamp = None if cell in OFFLINE_STAMPS else _parse_stamp(cell, path, line, "TIMESTAMP")
        rows.append(
            (
                line,
                stamp,
                as_length(row["ContextTokens"], path, line, "ContextTokens"),
                as_length(row["GeneratedTokens"], path, line, "GeneratedTokens"),
            )
        )
    return _timed_trace(path, "azure", rows, "TIMESTAMP")


def _read_burstgpt(path, text: str) -> Trace:
    rows, failed = [], 0
    for line, row in _csv_rows(path, text, BURSTGPT_COLUMNS):
        stamp = as_seconds(row["Timestamp"], path, line, "Timestamp")
        prompt = as_length(row["Request tokens"], path, line, "Request tokens")
        output = as_length(row["Response tokens"], path, line, "Response tokens")
        if output == 0:  # BurstGPT marks a failed request by 0 response tokens: nothing to replay
            failed += 1
            continue
        rows.append((line, stamp, prompt, output))
    if not rows and failed:
        raise TraceError(f"{path}: all {failed} rows are failed requests (0 response tokens)")
    trace = _timed_trace(path, "burstgpt", rows, "Timestamp")
    return trace.with_meta(num_failed=failed)


def _read_mooncake(path, text: str) -> Trace:
    rows = []
    for line, obj in iter_jsonl(path, text):
        stamp = None
        if isinstance(obj, dict) and "timestamp" in obj:
            stamp = as_seconds(obj["timestamp"], path, line, "timestamp", unit=1e-3)  # Mooncake: milliseconds
        rows.append(
            (
                line,
                stamp,
                as_length(require(obj, "input_length", path, line), path, line, "input_length"),
                as_length(require(obj, "output_length", path, line), path, line, "output_length"),
            )
        )
    return _timed_trace(path, "mooncake", rows, "timestamp")


def _timed_trace(path, fmt: str, rows: list[tuple[int, float | None, int, int]], stamp_field: str) -> Trace:
    """Requests from (line, absolute time or None, prompt, output); times all present or all absent."""
    if not rows:
        raise TraceError(f"{path}: no requests (only a header)")
    missing = [line for line, stamp, _, _ in rows if stamp is None]
    if missing and len(missing) < len(rows):
        first_timed = next(line for line, stamp, _, _ in rows if stamp is not None)
        raise fail(
            path, missing[0], f"no time stamp, but line {first_timed} has one (all or none)", stamp_field
        )
    start = 0.0 if missing else min(stamp for _, stamp, _, _ in rows)
    requests = [TraceRequest(0.0 if stamp is None else stamp - start, p, o) for _, stamp, p, o in rows]
    requests.sort(key=lambda r: r.arrival_s)
    return Trace(requests, {"source": str(path), "format": fmt, "count": len(requests)})
