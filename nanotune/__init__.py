"""nanotune: throughput tuning for LLM serving (engine, traces, profile, search, bench)."""

__version__ = "0.1.0"
