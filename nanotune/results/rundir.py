"""The run directory made and probed before anything runs: a result that cannot be written is found out
in the first second, not after the whole benchmark (whose measurement would then be lost)."""

from __future__ import annotations

import os
from pathlib import Path

from nanotune.errors import UserError
from nanotune.results.store import new_run_dir, results_root


def open_run_dir(kind: str, label: str | None, root: str | os.PathLike | None) -> Path:
    """new_run_dir, then write and delete a probe file in it; any failure is one line naming the folder."""
    base = results_root(root)
    return _writable(base, lambda: new_run_dir(kind, label, root), ".write-test")


def discard_if_empty(run_dir: Path) -> None:
    """A run that ended before writing anything leaves no empty folder behind."""
    try:
        run_dir.rmdir()
    except OSError:
        pass


def probe_root(root: str | os.PathLike | None) -> Path:
    """The results folder exists (made if needed) and takes a file: for commands whose run directory is
    made at the end (search), checked at the start."""
    base = results_root(root)

    def make() -> Path:
        base.mkdir(parents=True, exist_ok=True)
        return base

    return _writable(base, make, f".write-test-{os.getpid()}")


def _writable(base: Path, make, probe_name: str) -> Path:
    """make() -> a folder; a file written and removed there proves it takes files. UserError (one line)
    naming the results folder otherwise."""
    try:
        folder = make()
        probe = folder / probe_name
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise UserError(f"results folder {base}: cannot write there ({why}); give --results-dir DIR") from None
    return folder
