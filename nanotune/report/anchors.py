"""Published reference points, shown beside local runs as OTHER HARDWARE and compared by efficiency
(% of each setup's own optimum), never by raw tokens/s.

Source: NanoFlow (Zhu et al., "NanoFlow: Towards Optimal Large Language Model Serving Throughput",
OSDI '25; arXiv:2408.12757), offline throughput, Llama-3-8B on one A100 80GB, constant 1024 input / 512 output
tokens; figures as quoted in nanotune's DESIGN.md ("Measuring performance honestly").
"""

from __future__ import annotations

SOURCE = "NanoFlow, Zhu et al., OSDI '25 (arXiv:2408.12757)"

ANCHORS = [
    {"label": "NanoFlow (published)", "engine": "nanoflow-paper", "model": "llama-3-8b",
     "gpu": "A100 80GB (published)", "trace": "constant 1024 in / 512 out", "mode": "offline",
     "total_token_throughput": 12756.0, "efficiency": 0.785, "source": SOURCE},
    {"label": "vLLM 0.5.3 (published)", "engine": "vllm-0.5.3", "model": "llama-3-8b",
     "gpu": "A100 80GB (published)", "trace": "constant 1024 in / 512 out", "mode": "offline",
     "total_token_throughput": 5187.0, "efficiency": 0.319, "source": SOURCE},
]


def anchor_rows() -> list[dict]:
    """Rows for the comparison table; the optimum is the one the published efficiency implies."""
    rows = []
    for a in ANCHORS:
        rows.append({**a, "is_anchor": True, "partial": False, "run": a["label"],
                     "optimal_total_token_throughput": a["total_token_throughput"] / a["efficiency"]})
    return rows
