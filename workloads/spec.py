"""One definition of a workload, shared by `nanotune trace`, `bench`, `search` and the scripts.

A workload spec is one text plus options:

    sharegpt | lmsys | splitwise               calibrated datasets, generated with a seed
    constant[:IN:OUT] | random[:IN:OUT[:RATIO]]  synthetic lengths (or --input-len/--output-len/--range-ratio)
    PATH                                       a trace file in any format `workloads.readers` reads

with `num_requests` (-n), `seed` and `filter`. `parse_workload` turns them into a frozen `WorkloadSpec`;
`WorkloadSpec.load()` builds the trace. Nothing else in the project reads a dataset name.

Filters: unless one is given, a dataset gets its entry of DEFAULT_FILTERS, and so does a file of a conversation
format of the same name (a ShareGPT or LMSYS dump); any other file is taken as it is ("none"). A file's
requests keep their order (they may be timed), so -n takes its first N after the filter; the seed only
matters to generated datasets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from workloads.errors import TraceError
from workloads.filters import apply_filter, parse_filter
from workloads.generators import dataset_names, generate
from workloads.readers import read_trace
from workloads.trace import Trace

DEFAULT_FILTERS = {"sharegpt": "vllm", "lmsys": "vllm", "splitwise": "max-len:4096"}
"""The filter each dataset gets by default; the one place it is declared.

- sharegpt: vLLM's rule (`workloads.filters`), so "sharegpt" is vLLM's `bench throughput` request set and a
  bench result compares with a vLLM result on the same name.
- lmsys: the same rule (LMSYS-Chat is a conversation dump like ShareGPT; the rule drops its few huge pastes).
- splitwise: prompts truncated so that prompt + output fits 4,096 tokens (the Azure trace's long-context tail).
- constant, random and every other file format: none.
"""
DEFAULT_NUM_REQUESTS = 1000
"""Requests drawn from a dataset when no -n is given (vLLM's `--num-prompts` default)."""
FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".gz")
SYNTHETIC_FIELDS = {"constant": ("input_len", "output_len"), "random": ("input_len", "output_len", "range_ratio")}
"""The fields NAME:A:B[:C] sets, in order, for the synthetic datasets."""


@dataclass(frozen=True)
class WorkloadSpec:
    """A parsed workload: what `load()` builds, and the text and label that name it."""

    source: str  # dataset name, or the path of a trace file
    is_file: bool
    num_requests: int | None = None  # None: DEFAULT_NUM_REQUESTS draws of a dataset, all of a file
    seed: int = 0
    filter: str | None = None  # None: the source's default (DEFAULT_FILTERS)
    params: tuple[tuple[str, object], ...] = ()  # generator parameters, sorted by name
    fmt: str = "auto"  # file format (workloads.readers.FORMATS)
    tokenizer: str | None = None  # local HF tokenizer folder, for files holding text

    @property
    def label(self) -> str:
        """For run ids and study names: 'sharegpt', 'constant-1024x512', a file's stem."""
        if self.is_file:
            return Path(self.source).stem
        p = dict(self.params)
        if self.source in SYNTHETIC_FIELDS and {"input_len", "output_len"} <= set(p):
            return f"{self.source}-{p['input_len']}x{p['output_len']}"
        return self.source

    @property
    def text(self) -> str:
        """The spec as one string: 'constant:1024:512', 'random:512:128:0.5', 'sharegpt', a path."""
        fields = SYNTHETIC_FIELDS.get(self.source, ())
        p = dict(self.params)
        if self.is_file or not p or set(p) - set(fields):
            return self.source
        values = [p.get(f) for f in fields]
        while values and values[-1] is None:
            values.pop()
        return ":".join([self.source, *map(str, values)]) if None not in values else self.source

    def default_filter(self, fmt: str | None = None) -> str:
        """The filter used when none is given: the dataset's, or the file format's (fmt, once read)."""
        key = fmt if self.is_file else self.source
        return DEFAULT_FILTERS.get(key or "", "none")

    def load(self) -> Trace:
        """The trace: a dataset generated (seeded) through its filter, or a file read, filtered and cut to -n.
        meta["workload"] records the spec text and meta["filter"] what the filter did."""
        if self.is_file:
            path = Path(self.source)
            if not path.is_file():
                raise TraceError(f"{path}: no such file")
            trace = read_trace(path, self.fmt, self.tokenizer)
            flt = self.filter or self.default_filter(trace.meta.get("format"))
            trace = apply_filter(trace, flt).head(self.num_requests)
        else:
            n = DEFAULT_NUM_REQUESTS if self.num_requests is None else self.num_requests
            trace = generate(self.source, n, self.seed, filter=self.filter or self.default_filter(),
                             **dict(self.params))
        return trace.with_meta(workload=self.text)


def is_file_spec(text: str) -> bool:
    """A path rather than a dataset name: it exists, has a directory part or a trace file's suffix."""
    return Path(text).exists() or "/" in text or text.endswith(FILE_SUFFIXES)


def parse_workload(text: str, num_requests: int | None = None, seed: int = 0, filter: str | None = None,
                   fmt: str = "auto", tokenizer: str | None = None, is_file: bool | None = None,
                   **params) -> WorkloadSpec:
    """Parse a workload spec (module docstring) with its options; every mistake is one TraceError line.

    `params` are generator parameters (input_len, output_len, range_ratio, range_style) given as options; a
    value also given in the text must agree with it. None values are ignored. `is_file` forces the text to be
    read as a path (True) or a dataset (False) instead of guessing with `is_file_spec`."""
    text = str(text).strip()
    params = {k: v for k, v in params.items() if v is not None}
    if num_requests is not None and (isinstance(num_requests, bool) or not isinstance(num_requests, int)
                                     or num_requests < 0):
        raise TraceError(f"number of requests must be a non-negative integer, got {num_requests}")
    if filter is not None:
        filter = parse_filter(filter).spec  # checked now, not after a long generation
    if not text:
        raise TraceError("empty workload: expected a dataset name, constant:IN:OUT, random:IN:OUT or a file")
    if is_file if is_file is not None else is_file_spec(text):
        if params:
            options = ", ".join("--" + k.replace("_", "-") for k in sorted(params))
            raise TraceError(f"{options}: generator options, for a dataset, not a trace file ({text})")
        return WorkloadSpec(text, True, num_requests, seed, filter, (), fmt, tokenizer)
    name, *values = text.split(":")
    names = dataset_names()
    fields = SYNTHETIC_FIELDS.get(name, ())
    if name not in names or (values and not 2 <= len(values) <= len(fields)):
        what = f"unknown dataset '{name}'" if name not in names else f"workload '{text}'"
        raise TraceError(f"{what}: expected a dataset name ({', '.join(names)}), constant:IN:OUT, "
                         "random:IN:OUT[:RATIO] or a trace file")
    if tokenizer is not None:
        raise TraceError("a tokenizer applies to files with text, not to a generated dataset")
    for field, value in zip(fields, values, strict=False):
        number = _number(value, field, text)
        if field in params and params[field] != number:
            raise TraceError(f"workload '{text}' sets {field} {number}, the option says {params[field]}")
        params[field] = number
    return WorkloadSpec(name, False, num_requests, seed, filter, tuple(sorted(params.items())), fmt, None)


def _number(value: str, field: str, text: str) -> int | float:
    try:
        number = float(value) if field == "range_ratio" else int(value)
    except ValueError:
        kind = "a number" if field == "range_ratio" else "a positive integer"
        raise TraceError(f"workload '{text}': {field} '{value}' is not {kind}") from None
    if field != "range_ratio" and number < 1:
        raise TraceError(f"workload '{text}': {field} must be a positive integer, got {number}")
    return number
