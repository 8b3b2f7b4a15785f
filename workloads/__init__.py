"""Workload traces for LLM serving benchmarks: generate, read, filter, time and summarize them.

numpy and the standard library only (transformers optionally, for exact token counts); never imports
nanotune or engine, so any tool can use it.

    >>> from workloads import parse_workload, assign_arrivals, trace_stats
    >>> trace = parse_workload("sharegpt", num_requests=1000, seed=1).load()  # vLLM's filter by default
    >>> trace = assign_arrivals(trace, "poisson", rate=4.0, seed=1)
    >>> trace_stats(trace).prompt_len.mean  # doctest: +SKIP
"""

from workloads.arrivals import MODES as ARRIVAL_MODES
from workloads.arrivals import assign_arrivals, burstiness_from_cv, resolve_arrivals
from workloads.errors import TraceError
from workloads.filters import FILTER_NAMES, Filter, apply_filter, parse_filter
from workloads.generators import RANGE_STYLES, dataset_names, generate, length_range, measured_arrivals
from workloads.readers import FORMATS, detect_format, normalize_format, read_trace
from workloads.runnable import describe_dropped, drop_unrunnable, request_summary, summary_line
from workloads.spec import DEFAULT_FILTERS, WorkloadSpec, is_file_spec, parse_workload
from workloads.stats import LengthStats, TraceStats, arrival_stats, ks_distance, length_stats, trace_stats
from workloads.trace import Trace, TraceRequest, load_jsonl, save_jsonl

__all__ = [
    "ARRIVAL_MODES",
    "DEFAULT_FILTERS",
    "FILTER_NAMES",
    "FORMATS",
    "RANGE_STYLES",
    "Filter",
    "LengthStats",
    "Trace",
    "TraceError",
    "TraceRequest",
    "TraceStats",
    "WorkloadSpec",
    "apply_filter",
    "arrival_stats",
    "assign_arrivals",
    "burstiness_from_cv",
    "describe_dropped",
    "dataset_names",
    "detect_format",
    "drop_unrunnable",
    "generate",
    "is_file_spec",
    "ks_distance",
    "length_range",
    "length_stats",
    "load_jsonl",
    "measured_arrivals",
    "normalize_format",
    "parse_filter",
    "parse_workload",
    "read_trace",
    "request_summary",
    "resolve_arrivals",
    "save_jsonl",
    "summary_line",
    "trace_stats",
]
