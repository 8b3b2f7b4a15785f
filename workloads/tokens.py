"""Turning text into token counts, for the conversation formats (ShareGPT, LMSYS-Chat-1M) that carry text.

With a local Hugging Face tokenizer (a folder holding tokenizer.json / tokenizer_config.json) the counts
are exact for that model, and the prompt's token ids are kept so an engine can replay the real prompt.
transformers is an optional dependency, so it is imported only when a tokenizer is asked for.

Without one, the count is an approximation: ceil(characters / 4), OpenAI's rule of thumb that one token
is about four characters of English text ("What are tokens and how to count them?", OpenAI help center).
It is close for English prose, low for code and for languages without spaces (LMSYS holds many), so
give a tokenizer when the exact lengths matter.
"""

from __future__ import annotations

import math
from pathlib import Path

from workloads.errors import TraceError

CHARS_PER_TOKEN = 4
"""OpenAI's documented average for English text; used only when no tokenizer is given."""


class TokenCounter:
    """Counts tokens of prompts and outputs; `describe()` says how, for the trace's metadata."""

    def __init__(self, tokenizer_path: str | Path | None = None):
        self.tokenizer_path = None if tokenizer_path is None else str(tokenizer_path)
        self._tokenizer = None if tokenizer_path is None else _load(self.tokenizer_path)

    @property
    def is_exact(self) -> bool:
        return self._tokenizer is not None

    def describe(self) -> str:
        if self._tokenizer is None:
            return f"approximate: ceil(characters / {CHARS_PER_TOKEN})"
        return f"huggingface: {self.tokenizer_path}"

    def prompt_ids(self, texts: list[str]) -> list[tuple[int, ...] | None]:
        """Token ids of each prompt as the model would see it (special tokens such as BOS included)."""
        if self._tokenizer is None:
            return [None] * len(texts)
        encoded = self._tokenizer(texts, add_special_tokens=True)["input_ids"]
        return [tuple(int(i) for i in ids) for ids in encoded]

    def count_outputs(self, texts: list[str]) -> list[int]:
        """Tokens the model would generate for each output (no BOS: generation does not emit one)."""
        if self._tokenizer is None:
            return [approx_tokens(t) for t in texts]
        encoded = self._tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [len(ids) for ids in encoded]

    def count_prompts(self, texts: list[str]) -> list[int]:
        if self._tokenizer is None:
            return [approx_tokens(t) for t in texts]
        return [len(ids) for ids in self.prompt_ids(texts)]


def approx_tokens(text: str) -> int:
    """ceil(len / 4): an empty text is 0 tokens, any non-empty text at least 1."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _load(path: str):
    if not Path(path).is_dir():
        raise TraceError(
            f"{path}: tokenizer folder not found (expected a local Hugging Face tokenizer folder)"
        )
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise TraceError(
            f"{path}: a tokenizer needs the optional 'transformers' package (pip install 'nanotune[hf]')"
        ) from None
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TraceError(f"{path}: cannot load a tokenizer from this folder: {first}") from None
