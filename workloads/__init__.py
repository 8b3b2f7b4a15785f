"""Workload traces for LLM serving benchmarks: generate, read, filter, time and summarize them.

numpy and the standard library only (transformers optionally, for exact token counts); never imports
nanotune or engine, so any tool can use it.

    >>> from workloads import generate, assign_arrivals, trace_stats
    >>> trace = generate("sharegpt", 1000, seed=1, filter="vllm")
    >>> trace = assign_arrivals(trace, "poisson", rate=4.0, seed=1)
    >>> trace_stats(trace).prompt_len.mean  # doctest: +SKIP
"""

from workloads.arrivals import MODES as ARRIVAL_MODES
from workloads.arrivals import assign_arrivals, burstiness_from_cv, resolve_arrivals
from workloads.errors import TraceError
from workloads.filters import FILTER_NAMES, Filter, apply_filter, parse_filter
from workloads.generators import RANGE_STYLES, dataset_names, generate, length_range, measured_arrivals
from workloads.readers import FORMATS, detect_format, normalize_format, read_trace
from workloads.stats import LengthStats, TraceStats, arrival_stats, ks_distance, length_stats, trace_stats
from workloads.trace import Trace, TraceRequest, load_jsonl, save_jsonl

__all__ = [
    "ARRIVAL_MODES",
    "FILTER_NAMES",
    "FORMATS",
    "RANGE_STYLES",
    "Filter",
    "LengthStats",
    "Trace",
    "TraceError",
    "TraceRequest",
    "TraceStats",
    "apply_filter",
    "arrival_stats",
    "assign_arrivals",
    "burstiness_from_cv",
    "dataset_names",
    "detect_format",
    "generate",
    "ks_distance",
    "length_range",
    "length_stats",
    "load_jsonl",
    "measured_arrivals",
    "normalize_format",
    "parse_filter",
    "read_trace",
    "resolve_arrivals",
    "save_jsonl",
    "trace_stats",
]
