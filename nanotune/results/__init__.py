"""What every command shares about results: the environment block, atomic JSON writes, run directories,
and the measured peak that "% of optimal" is computed against.

Each command writes `results/<run-id>/result.json` with the same top-level keys (`schema`, `kind`, `run_id`,
`created`, `partial`, `environment`, ...) so `nanotune compare` / `report` can read any of them.
"""

from nanotune.results.environment import environment, git_sha
from nanotune.results.peak import PeakFlops, copy_bandwidth_gbs, optimal_total_token_throughput, peak_flops
from nanotune.results.store import (
    RESULTS_ENV,
    find_results,
    load_result,
    new_run_dir,
    results_root,
    run_id,
    write_json_atomic,
)

__all__ = [
    "RESULTS_ENV",
    "PeakFlops",
    "environment",
    "find_results",
    "git_sha",
    "load_result",
    "new_run_dir",
    "optimal_total_token_throughput",
    "peak_flops",
    "copy_bandwidth_gbs",
    "results_root",
    "run_id",
    "write_json_atomic",
]
