"""Checked field access for trace files: every problem becomes one `TraceError` line naming file, line, field.

Readers call these instead of `int(...)` or `obj["key"]` so that a malformed file a user brings yields
`traces/x.jsonl:7: field 'prompt_len': expected a non-negative integer, got -3` and never a traceback.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

from workloads.errors import TraceError


def fail(path: str | Path, line: int | None, problem: str, field: str | None = None) -> TraceError:
    """Build (not raise) the one-line error; callers `raise fail(...)` so the raise site stays visible."""
    where = f"{path}:{line}" if line is not None else f"{path}"
    what = f"field '{field}': {problem}" if field is not None else problem
    return TraceError(f"{where}: {what}")


def _show(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(value: object, blank_is_none: bool = False) -> object:
    """A CSV/JSON cell as a number where it is one (strings of digits included); anything else unchanged."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if blank_is_none and not text:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _is_finite_non_negative(number: object) -> bool:
    return (not isinstance(number, bool) and isinstance(number, int | float) and math.isfinite(number)
            and number >= 0)


def as_length(value: object, path: str | Path, line: int, field: str) -> int:
    """A token count: a non-negative integer (strings of digits from CSV cells, integral floats accepted)."""
    number = _number(value, blank_is_none=True)
    if not _is_finite_non_negative(number) or number != int(number):
        raise fail(path, line, f"expected a non-negative integer, got {_show(value)}", field)
    return int(number)


def as_seconds(value: object, path: str | Path, line: int, field: str, unit: float = 1.0) -> float:
    """A time stamp or offset: a finite non-negative number, multiplied by `unit` to give seconds."""
    number = _number(value)
    if not _is_finite_non_negative(number):
        raise fail(path, line, f"expected a non-negative number of seconds, got {_show(value)}", field)
    return float(number) * unit


def require(obj: object, key: str, path: str | Path, line: int) -> object:
    """obj[key] for a JSON object, or an error naming the missing field."""
    if not isinstance(obj, dict):
        raise fail(path, line, f"expected a JSON object, got {_show(obj)}")
    if key not in obj:
        raise fail(path, line, "missing", key)
    return obj[key]


def _is_truncated(text: str, err: json.JSONDecodeError) -> bool:
    """The text ended inside a value (a cut download) rather than holding a wrong character.

    An unterminated string can only run into the end: JSON strings cannot hold a raw newline.
    """
    return err.pos >= len(text.rstrip()) or err.msg.startswith("Unterminated string")


def _decode_error(path: str | Path, text: str, err: json.JSONDecodeError) -> TraceError:
    if _is_truncated(text, err):
        return fail(path, text.rstrip().count("\n") + 1, "truncated JSON (the file ends inside a value)")
    return fail(path, text.count("\n", 0, err.pos) + 1, f"invalid JSON: {err.msg}")


def iter_jsonl(path: str | Path, text: str) -> Iterator[tuple[int, object]]:
    """(1-based line, decoded object) for every non-blank line of a JSON Lines text."""
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            yield number, json.loads(raw)
        except json.JSONDecodeError as e:
            problem = "truncated JSON line" if _is_truncated(raw, e) else f"invalid JSON: {e.msg}"
            raise fail(path, number, problem) from None


def iter_json_array(path: str | Path, text: str) -> Iterator[tuple[int, object]]:
    """(1-based line where the element starts, element) for a top-level JSON array.

    Decoding element by element (rather than `json.loads` of the whole text) is what lets a bad field
    in a 600 MB ShareGPT dump be reported with the line it sits on.
    """
    decoder = json.JSONDecoder()
    size = len(text)
    pos = _skip_space(text, 0)
    if pos >= size or text[pos] != "[":
        raise fail(path, text.count("\n", 0, pos) + 1, "expected a JSON array ('[')")
    pos = _skip_space(text, pos + 1)
    line, counted = 1, 0
    if pos < size and text[pos] == "]":
        return
    while True:
        if pos >= size:
            raise fail(path, text.count("\n") + 1, "truncated JSON (the array is not closed)")
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            element, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise _decode_error(path, text, e) from None
        yield line, element
        pos = _skip_space(text, end)
        if pos >= size:
            raise fail(path, text.count("\n") + 1, "truncated JSON (the array is not closed)")
        if text[pos] == "]":
            return
        if text[pos] != ",":
            raise fail(
                path, text.count("\n", 0, pos) + 1, f"invalid JSON: expected ',' or ']', got {text[pos]!r}"
            )
        pos = _skip_space(text, pos + 1)


def _skip_space(text: str, pos: int) -> int:
    size = len(text)
    while pos < size and text[pos] in " \t\r\n":
        pos += 1
    return pos
