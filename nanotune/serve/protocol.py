"""OpenAI request bodies -> what the engine runs, checked field by field.

A field the engine cannot honour with a non-default value (n > 1, logprobs, penalties, ...) is refused
with a 400 naming it, never ignored: a client asking for it would otherwise get something else silently.
Fields this server does not know at all are ignored (clients send `user`, `metadata`, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from engine.request import SamplingParams

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions

# field -> the value meaning "not asked for"; anything else is refused
UNSUPPORTED = {"n": 1, "best_of": 1, "echo": False, "logprobs": None, "top_logprobs": None,
               "presence_penalty": 0, "frequency_penalty": 0, "repetition_penalty": 1, "logit_bias": None,
               "suffix": None, "tools": None, "response_format": None, "min_p": 0, "use_beam_search": False}


class BadRequest(ValueError):
    """A 400: `param` names the offending field (OpenAI's error body carries it)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass
class GenerationRequest:
    """One parsed request: either token ids or text to tokenize (`text`), or chat `messages`."""

    is_chat: bool
    model: str | None
    prompt_ids: list[int] | None = None
    text: str | None = None
    messages: list[dict] | None = None
    max_tokens: int | None = None  # None: completions -> 16; chat -> what the context leaves
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    ignore_eos: bool = False
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False

    def sampling_params(self, max_tokens: int) -> SamplingParams:
        return SamplingParams(max_tokens=max_tokens, temperature=self.temperature, top_k=self.top_k,
                              top_p=self.top_p, seed=self.seed, ignore_eos=self.ignore_eos,
                              stop_token_ids=tuple(self.stop_token_ids))


def _num(body: dict, name: str, default, kind=float, lo=None, hi=None, lo_open=False):
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not float(v).is_integer()):
        raise BadRequest(f"'{name}' must be {'an integer' if kind is int else 'a number'}, got {v!r}", name)
    v = kind(v)
    if isinstance(v, float) and not math.isfinite(v):
        raise BadRequest(f"'{name}' must be finite, got {v!r}", name)
    if lo is not None and (v < lo or (lo_open and v == lo)) or hi is not None and v > hi:
        rng = f"{'(' if lo_open else '['}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise BadRequest(f"'{name}' must be in {rng}, got {v!r}", name)
    return v


def _is_ids(x) -> bool:
    return isinstance(x, list) and bool(x) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)


def _prompt(body: dict) -> tuple[list[int] | None, str | None]:
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and (isinstance(p[0], str) or _is_ids(p[0])):
        p = p[0]  # a batch of one
    if isinstance(p, str):
        if not p:
            raise BadRequest("'prompt' is empty", "prompt")
        return None, p
    if _is_ids(p):
        return list(p), None
    if isinstance(p, list) and len(p) > 1 and all(isinstance(x, (str, list)) for x in p):
        raise BadRequest("'prompt': one prompt per request (send a batch as separate requests)", "prompt")
    raise BadRequest("'prompt' must be a string or a non-empty list of token ids", "prompt")


def _messages(body: dict) -> list[dict]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("'messages' must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a 'role'", "messages")
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            if not all(isinstance(c, dict) and c.get("type") == "text" and isinstance(c.get("text"), str)
                       for c in content):
                raise BadRequest(f"messages[{i}].content: only text parts are supported", "messages")
            content = "".join(c["text"] for c in content)
        if not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content must be a string or a list of text parts", "messages")
        out.append({"role": m["role"], "content": content})
    return out


def parse_request(body, is_chat: bool) -> GenerationRequest:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    for name, default in UNSUPPORTED.items():
        if body.get(name) not in (None, default):
            raise BadRequest(f"'{name}' is not supported by this server (got {body[name]!r})", name)
    req = GenerationRequest(is_chat=is_chat, model=body.get("model"))
    if is_chat:
        req.messages = _messages(body)
    else:
        req.prompt_ids, req.text = _prompt(body)
    max_name = "max_completion_tokens" if is_chat and body.get("max_completion_tokens") is not None \
        else "max_tokens"
    req.max_tokens = _num(body, max_name, None, int, lo=1)
    if req.max_tokens is None and not is_chat:
        req.max_tokens = COMPLETIONS_DEFAULT_MAX_TOKENS
    req.temperature = _num(body, "temperature", 1.0, float, lo=0, hi=2)
    req.top_p = _num(body, "top_p", 1.0, float, lo=0, hi=1, lo_open=True)
    req.top_k = _num(body, "top_k", 0, int, lo=-1)
    req.top_k = max(req.top_k, 0)  # -1 (vLLM's "off") and 0 both disable it
    req.seed = _num(body, "seed", None, int, lo=0, hi=2**63 - 1)
    req.ignore_eos = bool(body.get("ignore_eos", False))
    min_tokens = _num(body, "min_tokens", 0, int, lo=0)
    if min_tokens and not (req.ignore_eos and req.max_tokens is not None and min_tokens <= req.max_tokens):
        # the engine has no min_tokens; with ignore_eos every request runs to max_tokens, which satisfies it
        raise BadRequest("'min_tokens' is supported only with ignore_eos and min_tokens <= max_tokens",
                         "min_tokens")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) and s for s in stop)):
        raise BadRequest("'stop' must be a string or a list of non-empty strings", "stop")
    req.stop = stop or []
    ids = body.get("stop_token_ids")
    if ids is not None and not (isinstance(ids, list) and all(isinstance(t, int) for t in ids)):
        raise BadRequest("'stop_token_ids' must be a list of integers", "stop_token_ids")
    req.stop_token_ids = ids or []
    req.stream = bool(body.get("stream", False))
    opts = body.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict):
            raise BadRequest("'stream_options' must be an object", "stream_options")
        if not req.stream:
            raise BadRequest("'stream_options' is only allowed with stream: true", "stream_options")
        req.include_usage = bool(opts.get("include_usage", False))
    return req
