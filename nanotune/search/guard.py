"""A search that fails or is stopped: storage errors as one line, a stopped study keeps what it finished
(no Optuna traceback), and a fresh study that produced nothing leaves no study file behind."""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path

from nanotune.errors import UserError

STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_study_name(name: str | None) -> None:
    """A study name becomes a file name under the results folder: no separators, no '..', no leading dot."""
    if name is not None and not STUDY_NAME.fullmatch(name):
        raise UserError(f"--study '{name}': use letters, digits, '.', '_' and '-' (it names a file under "
                        "results/search/; give --storage URL to keep a study elsewhere)")


@contextlib.contextmanager
def storage_errors(storage: str):
    """Errors opening an Optuna storage (a malformed URL, a database driver not installed, a server not
    reachable, a file that is not an Optuna sqlite database) become one line naming the storage."""
    try:
        yield
    except UserError:
        raise
    except ImportError as e:
        raise UserError(f"--storage {storage}: its database driver is not installed ({e.name or e})") from None
    except Exception as e:
        mod = type(e).__module__ or ""
        if not (mod.startswith(("sqlalchemy", "optuna", "sqlite3", "alembic")) or isinstance(e, ValueError)):
            raise
        why = str(getattr(e, "orig", None) or e).splitlines()[0][:200]
        raise UserError(f"storage {storage}: cannot open it ({type(e).__name__}: {why})") from None


class _NoInterruptTracebacks(logging.Filter):
    """Optuna logs a trial stopped by Ctrl-C/SIGTERM as failed, with its traceback: drop that record."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, KeyboardInterrupt) and "KeyboardInterrupt" not in record.getMessage()


@contextlib.contextmanager
def quiet_interrupts():
    log = logging.getLogger("optuna")
    flt = _NoInterruptTracebacks()
    log.addFilter(flt)
    for h in log.handlers:
        h.addFilter(flt)
    try:
        yield
    finally:
        log.removeFilter(flt)
        for h in log.handlers:
            h.removeFilter(flt)


def sqlite_file(storage: str) -> Path | None:
    return Path(storage.removeprefix("sqlite:///")) if storage.startswith("sqlite:///") else None


def discard_study(storage: str, name: str, is_fresh: bool) -> str | None:
    """After a fresh study failed: delete its sqlite file if nothing else lives in it, else the study in it;
    returns what was left behind (None: nothing)."""
    if not is_fresh:
        return None
    try:
        import optuna

        optuna.delete_study(study_name=name, storage=storage)
        path = sqlite_file(storage)
        if path is not None and path.exists() and not optuna.study.get_all_study_names(storage=storage):
            path.unlink()
        return None
    except Exception as e:  # the storage is what failed: say where the study is
        return f"study '{name}' may remain in {storage} ({type(e).__name__})"
