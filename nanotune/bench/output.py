"""Writing a bench run to `results/<run-id>/`: `requests.csv` first, then `result.json` (atomically, last,
so a result.json that exists always has its CSV beside it)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from nanotune.results.store import write_json_atomic

CSV_COLUMNS = ["request_rate", "repeat", "request_id", "status", "prompt_len", "expected_output_len",
               "output_len", "is_short", "arrival_s", "send_s", "first_token_s", "end_s", "queue_ms",
               "ttft_ms", "tpot_ms", "e2el_ms", "mean_itl_ms", "max_itl_ms", "num_chunks", "error"]


def write_requests_csv(path: Path, rows: list[dict]) -> Path:
    import pandas as pd

    df = pd.DataFrame(rows, columns=CSV_COLUMNS)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        df.to_csv(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# vLLM's per-token lists: megabytes at real sizes, so kept out of result.json (requests.csv has each request's
# mean and max ITL); `nanotune bench --vllm-json FILE` writes them with the rest of vLLM's keys
PER_TOKEN_KEYS = ("itls", "generated_texts")


def write_bench_run(run_dir: Path, result: dict, rows: list[dict]) -> Path:
    """Write both files; returns the result.json path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_requests_csv(run_dir / "requests.csv", rows)
    return write_json_atomic(run_dir / "result.json", {k: v for k, v in result.items() if k not in PER_TOKEN_KEYS})
