"""Where results live and how they are written: `results/<run-id>/`, atomically.

A result file is either the old one or the new one, never half of each: a benchmark interrupted while
writing (Ctrl-C, a killed job) must not leave a truncated JSON that `compare` later chokes on.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from pathlib import Path

RESULTS_ENV = "NANOTUNE_RESULTS"


def results_root(override: str | os.PathLike | None = None) -> Path:
    """`--results-dir` if given, else $NANOTUNE_RESULTS, else ./results (the repo's top-level results/)."""
    if override:
        return Path(override)
    return Path(os.environ.get(RESULTS_ENV) or "results")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60]


def run_id(kind: str, label: str | None = None, now: float | None = None) -> str:
    """`20261126-091500-bench-sharegpt`: sortable by time, readable by kind and label."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    parts = [stamp, _slug(kind)] + ([_slug(label)] if label else [])
    return "-".join(p for p in parts if p)


def new_run_dir(kind: str, label: str | None = None, root: str | os.PathLike | None = None) -> Path:
    """Create and return a fresh `results/<run-id>/`; a suffix `-2`, `-3`, ... keeps two runs started in the
    same second apart (never overwrite an earlier run's files)."""
    base = results_root(root)
    base.mkdir(parents=True, exist_ok=True)
    rid = run_id(kind, label)
    for i in range(1, 1000):
        path = base / (rid if i == 1 else f"{rid}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a run directory under {base}")


def _clean(obj):
    """JSON has no NaN/inf: write them as null so every reader (not only Python's) can load the file."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _clean(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json_atomic(path: str | os.PathLike, obj) -> Path:
    """Write `obj` as JSON to a temp file in the same directory, fsync it, then os.replace it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_clean(obj), f, indent=2, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_result(path: str | os.PathLike) -> tuple[dict, Path]:
    """Read a result given as a `result.json` file or a run directory; returns (result, run_dir)."""
    path = Path(path)
    file = path / "result.json" if path.is_dir() else path
    with open(file) as f:  # FileNotFoundError is turned into a one-line user error by the CLI group
        try:
            result = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{file}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(result, dict):
        raise ValueError(f"{file}: expected a JSON object at the top level")
    return result, file.parent


def find_results(root: str | os.PathLike, kind: str | None = None) -> list[Path]:
    """Every `result.json` under `root` (sorted by run id, i.e. by time), optionally only of one kind."""
    out = []
    for file in sorted(Path(root).rglob("result.json")):
        if kind is not None:
            try:
                if load_result(file)[0].get("kind") != kind:
                    continue
            except (OSError, ValueError):
                continue
        out.append(file)
    return out
