"""Readers for the conversation datasets, which carry text rather than token counts.

ShareGPT (`[{"id", "conversations": [{"from", "value"}, ...]}]`) and LMSYS-Chat-1M (`{"conversation":
[{"role", "content"}, ...]}`, as a JSON array or JSON Lines). Each conversation gives one request; later
turns are ignored. Which two turns:
- ShareGPT, as vLLM's benchmark reads it: turn [0] is the prompt and turn [1] the output, whoever speaks
  them (a dump's first turn is sometimes a system or model turn; vLLM does not look, and neither do we, so
  that "sharegpt" here and in vLLM is the same request set). Conversations with fewer than two turns are skipped.
- LMSYS: the first user turn and the assistant turn right after it (roles are reliable there).
Skipped conversations are counted in meta["num_skipped"]. Text becomes token counts through
`workloads.tokens.TokenCounter`.
"""

from __future__ import annotations

from pathlib import Path

from workloads.parsing import fail, iter_json_array, iter_jsonl, require
from workloads.tokens import TokenCounter
from workloads.trace import Trace, TraceRequest


def read_sharegpt(path: str | Path, text: str, counter: TokenCounter) -> Trace:
    return _read_conversations(path, text, counter, "sharegpt", "conversations", "from", "value", None)


def read_lmsys(path: str | Path, text: str, counter: TokenCounter) -> Trace:
    return _read_conversations(path, text, counter, "lmsys", "conversation", "role", "content", _lmsys_roles)


def _read_conversations(path, text, counter, fmt, turns_key, who_key, text_key, role_of) -> Trace:
    """Both datasets have the same shape with different key names: one reader, told the names."""
    pairs, skipped = [], 0
    for line, entry in _records(path, text):
        turns = require(entry, turns_key, path, line)
        pair = _first_exchange(turns, path, line, turns_key, who_key, text_key, role_of)
        if pair is None:
            skipped += 1
        else:
            pairs.append(pair)
    return _to_trace(path, fmt, pairs, skipped, counter)


def _lmsys_roles(role: str) -> str:
    return {"user": "ask", "assistant": "answer"}.get(role.lower(), "other")


def _records(path, text):
    """JSON array or JSON Lines, whichever the text is."""
    if text.lstrip().startswith("["):
        return iter_json_array(path, text)
    return iter_jsonl(path, text)


def _first_exchange(turns, path, line, field, who_key, text_key, role_of):
    """(prompt text, output text), or None: turns [0] and [1] when role_of is None (vLLM's ShareGPT rule),
    else the first asking turn and the answer right after it."""
    if not isinstance(turns, list):
        raise fail(path, line, f"expected a list of turns, got {type(turns).__name__}", field)
    for i, turn in enumerate(turns):
        where = f"{field}[{i}]"
        if not isinstance(turn, dict):
            raise fail(path, line, f"expected a JSON object, got {type(turn).__name__}", where)
        for key in (who_key, text_key):
            if key not in turn:
                raise fail(path, line, "missing", f"{where}.{key}")
            if not isinstance(turn[key], str):
                raise fail(path, line, f"expected a string, got {type(turn[key]).__name__}", f"{where}.{key}")
    if role_of is None:
        return (turns[0][text_key], turns[1][text_key]) if len(turns) >= 2 else None
    for i in range(len(turns) - 1):
        if role_of(turns[i][who_key]) == "ask" and role_of(turns[i + 1][who_key]) == "answer":
            return turns[i][text_key], turns[i + 1][text_key]
    return None


def _to_trace(path, fmt: str, pairs: list[tuple[str, str]], skipped: int, counter: TokenCounter) -> Trace:
    prompts = [p for p, _ in pairs]
    outputs = [o for _, o in pairs]
    ids = counter.prompt_ids(prompts)
    prompt_lens = [len(i) for i in ids] if counter.is_exact else counter.count_prompts(prompts)
    output_lens = counter.count_outputs(outputs)
    requests = [TraceRequest(0.0, p, o, i) for p, o, i in zip(prompt_lens, output_lens, ids, strict=True)]
    meta = {
        "source": str(path),
        "format": fmt,
        "tokens": counter.describe(),
        "num_skipped": skipped,
        "count": len(requests),
    }
    return Trace(requests, meta)
