"""Text in and out: the tokenizer of a local Hugging Face checkpoint (transformers' AutoTokenizer, offline),
the chat template, incremental detokenization and stop strings. Without a tokenizer only token-id prompts
are served and the answers carry no text."""

from __future__ import annotations

from pathlib import Path

from nanotune.serve.protocol import BadRequest

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")


def load_tokenizer(path: str | None):
    """AutoTokenizer from a local folder holding tokenizer files, else None (presets have none)."""
    if not path or not Path(path).is_dir() or not any((Path(path) / f).exists() for f in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def no_tokenizer(what: str) -> BadRequest:
    return BadRequest(f"{what} needs a tokenizer and this server has none (serve a local Hugging Face "
                      "checkpoint folder with tokenizer files, or send 'prompt' as a list of token ids)",
                      "messages" if what == "a chat request" else "prompt")


def encode_prompt(tokenizer, text: str | None, messages: list[dict] | None) -> list[int]:
    if tokenizer is None:
        raise no_tokenizer("a chat request" if messages is not None else "a text prompt")
    if messages is None:
        return list(tokenizer.encode(text))
    if not getattr(tokenizer, "chat_template", None):
        raise BadRequest("this model's tokenizer has no chat template: use /v1/completions", "messages")
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # newer transformers return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


class Detokenizer:
    """Token ids -> text deltas, one call per token. Decodes a short window (not the whole output each
    time) and holds a delta back while it ends in an incomplete UTF-8 sequence. Stop strings cut the
    text before the match; `is_stopped` then says the request should end."""

    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer = tokenizer
        self.stop = stop
        self.ids: list[int] = []
        self.prefix_offset = self.read_offset = 0
        self.text = ""  # everything emitted so far
        self.held = ""  # text decoded but not emitted: it may be the start of a stop string
        self.is_stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, token_ids: list[int]) -> str:
        """The text these tokens add (may be empty)."""
        if self.tokenizer is None or self.is_stopped:
            return ""
        self.ids += token_ids
        full = self._decode(self.ids[self.prefix_offset:])
        if full.endswith("\ufffd"):
            return ""  # a multi-byte character not complete yet
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        new = full[len(prefix):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return self._emit(self.held + new)

    def _emit(self, pending: str) -> str:
        if not self.stop:
            self.text += pending
            return pending
        hits = [at for at in (pending.find(s) for s in self.stop) if at >= 0]
        if hits:  # the held suffix makes a stop string straddling two deltas show up here whole
            out = pending[:min(hits)]
            self.is_stopped = True
            self.text, self.held = self.text + out, ""
            return out
        keep = max(len(s) for s in self.stop) - 1  # a suffix that could still grow into a stop string
        cut = max(len(pending) - keep, 0)
        self.text, self.held = self.text + pending[:cut], pending[cut:]
        return pending[:cut]

    def flush(self) -> str:
        out, self.held = self.held, ""
        self.text += out
        return out
