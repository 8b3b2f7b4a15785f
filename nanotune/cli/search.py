"""`nanotune search` (not built yet)."""

import click

from nanotune.errors import NotBuiltError


@click.command(name="search", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def command(args):
    """Not built yet: says so and exits 2."""
    raise NotBuiltError("'nanotune search' is not built yet")
