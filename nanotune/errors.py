"""User-facing errors: one line naming the problem, exit code 2, never a traceback."""

from __future__ import annotations

import click


class UserError(click.ClickException):
    """A mistake the user can fix (bad path, bad value, malformed file)."""

    exit_code = 2

    def show(self, file=None) -> None:  # one line, no "Usage:" block
        from rich.markup import escape

        from nanotune.console import err_console

        err_console.print(f"[bold red]error:[/] {escape(self.format_message())}", markup=True, highlight=False,
                          soft_wrap=True)


class NotBuiltError(UserError):
    """A command that exists in the design but is not implemented yet."""
