"""One path for SIGINT (Ctrl-C) and SIGTERM (`timeout`, Slurm, Docker, Kubernetes): the first signal stops
the run the way Ctrl-C does (a KeyboardInterrupt the driver catches, ending the phase with what was
measured); every later one, however many and however soon, is reported and ignored, so writing the result
cannot be cut short. SIGKILL cannot be caught: the atomic writes keep result.json whole or absent."""

from __future__ import annotations

import atexit
import signal
import sys
import threading

import click

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal's number, as shells report it


class StopSignals:
    def __init__(self, on_repeat=None) -> None:
        self.received: list[int] = []
        self.on_repeat = on_repeat or (lambda signum: None)
        self._old: dict = {}
        self._old_unraisable = None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in EXIT_CODES:
                self._old[sig] = signal.signal(sig, self._handle)
            self._old_unraisable, sys.unraisablehook = sys.unraisablehook, self._unraisable
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}
        if self._old_unraisable is not None:
            sys.unraisablehook, self._old_unraisable = self._old_unraisable, None

    def _unraisable(self, unraisable) -> None:
        """The stop signal's KeyboardInterrupt raised inside a finalizer or weakref callback (a library's
        cleanup that happened to run then) cannot propagate; Python would print its traceback. The stop is
        already recorded (`stopped`, which the drivers also poll), so it is dropped; anything else is reported
        as before."""
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and self.received:
            return
        (self._old_unraisable or sys.__unraisablehook__)(unraisable)

    def _handle(self, signum, frame) -> None:
        self.received.append(signum)
        if len(self.received) == 1:
            raise KeyboardInterrupt
        self.on_repeat(signum)

    @property
    def stopped(self) -> bool:
        return bool(self.received)

    @property
    def exit_code(self) -> int:
        """130 after SIGINT, 143 after SIGTERM (the first signal decides), 0 when none came."""
        return EXIT_CODES.get(self.received[0], 130) if self.received else 0


class Interrupted(click.ClickException):
    """Stopped by a signal before there was anything to write: one line, exit 130 (SIGINT) / 143 (SIGTERM)."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        from rich.markup import escape

        from nanotune.console import err_console

        err_console.print(f"[yellow]{escape(self.format_message())}[/]", highlight=False, soft_wrap=True)


def ignore_further() -> None:
    """The run is written: a late SIGINT/SIGTERM while the tables print must not turn a saved run into a
    process killed by a signal (the exit status already says it was stopped). Called by a CLI command after
    writing; the old handlers come back when the command's click context closes."""
    if threading.current_thread() is not threading.main_thread():
        return
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in EXIT_CODES}
    atexit.register(_ignore_at_exit)  # runs before torch's own exit hooks (registered earlier, run later)
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.call_on_close(lambda: [signal.signal(sig, h) for sig, h in old.items()])


def _ignore_at_exit() -> None:
    for sig in EXIT_CODES:
        signal.signal(sig, signal.SIG_IGN)
