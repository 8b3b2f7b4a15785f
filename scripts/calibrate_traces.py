#!/usr/bin/env python3
"""Regenerate workloads/data/calibration.json from the reference length traces.

    python scripts/calibrate_traces.py --traces DIR [--out FILE]   # DIR holds sharegpt/lmsys/splitwise.csv

The package never reads the reference traces at run time (a user's machine does not have them); it ships
what this script derives: per dataset, the quantile functions of prompt and output length, a rank copula
of the two, the reference file's summary statistics, and (Splitwise) the measured arrival rate and CV.
The method is documented in workloads/calibration.py. The output is deterministic: rerunning this script
on the same files gives the same bytes, which tests/test_workloads_generators.py checks.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

from workloads.calibration import COPULA_GRID, build_dataset, probability_levels
from workloads.readers import read_trace

REPO = Path(__file__).resolve().parents[1]  # where the checkout's traces and data file sit

DATASETS = {
    "sharegpt": "ShareGPT conversations as tokenized by the NanoFlow authors (unfiltered)",
    "lmsys": "LMSYS-Chat-1M sample (100k) as tokenized by the NanoFlow authors",
    "splitwise": "Azure LLM inference trace 2023, conversation service (Splitwise, ISCA 2024); CC-BY",
}
DEFAULT_OUT = REPO / "workloads" / "data" / "calibration.json"


def calibrate(traces_dir: Path) -> dict:
    """The whole calibration document for the three reference CSVs in `traces_dir`."""
    levels = probability_levels()
    datasets = {}
    for name, description in DATASETS.items():
        path = traces_dir / f"{name}.csv"
        trace = read_trace(path, "azure")
        source = {
            "file": path.name,
            "description": description,
            "rows": len(trace),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
        arrivals = trace.arrivals if trace.is_timed else None
        datasets[name] = build_dataset(trace.prompt_lens, trace.output_lens, arrivals, source)
    return {
        "version": 1,
        "generated_by": "scripts/calibrate_traces.py",
        "method": "Hazen quantile functions at `levels` + a rank copula on a "
        f"{COPULA_GRID}x{COPULA_GRID} grid; see workloads/calibration.py",
        "levels": [float(x) for x in levels],
        "datasets": datasets,
    }


def dumps(document: dict) -> str:
    """Compact JSON (about 100 KB); the file is data, regenerated rather than edited by hand."""
    return json.dumps(document, separators=(",", ":")) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=Path, required=True, help="folder holding the three reference CSVs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="calibration JSON to write")
    args = parser.parse_args(argv)
    text = dumps(calibrate(args.traces))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=args.out.parent, prefix=".calibration.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; this is a committed data file
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({len(text.encode()) / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
