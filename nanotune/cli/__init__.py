"""The `nanotune` command group. One module per command; each is a thin layer over one entry point.

Heavy imports (torch, pandas, matplotlib) happen inside the commands, so `nanotune --help` stays fast.
"""

from __future__ import annotations

import importlib

import click

from engine.errors import EngineConfigError
from nanotune.errors import UserError
from workloads.errors import TraceError

# command name -> module under nanotune.cli holding a click command called `command`
COMMANDS = {
    "trace": "trace",
    "bench": "bench",
    "compare": "compare",
    "profile": "profile",
    "search": "search",
    "report": "report",
    "serve": "serve",
}


class NanotuneGroup(click.Group):
    """Loads subcommands lazily and turns user-caused errors into one line with exit code 2."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        return importlib.import_module(f"nanotune.cli.{COMMANDS[name]}").command

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:  # a bad option value: one line too, not click's usage block
            raise UserError(e.format_message()) from None
        except (TraceError, EngineConfigError) as e:
            raise UserError(str(e)) from None
        except FileNotFoundError as e:
            raise UserError(f"{e.filename or e}: no such file") from None
        except IsADirectoryError as e:
            raise UserError(f"{e.filename or e}: is a directory, expected a file") from None
        except PermissionError as e:
            raise UserError(f"{e.filename or e}: permission denied") from None
        except KeyboardInterrupt:  # stopped before anything was measured (a run writes its partial result)
            from nanotune.console import err_console

            err_console.print("[yellow]interrupted before anything was measured: nothing written[/]")
            raise SystemExit(130) from None


@click.group(cls=NanotuneGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nanotune")
def main():
    """nanotune: measure and raise the tokens/s of LLM serving on your GPUs."""
