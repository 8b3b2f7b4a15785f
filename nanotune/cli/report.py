"""`nanotune report`: `compare` over every bench result found under a directory."""

from __future__ import annotations

from pathlib import Path

import click

from nanotune.errors import UserError


@click.command(name="report")
@click.argument("directory", required=False, type=click.Path(exists=True, file_okay=False))
@click.option("--anchors", is_flag=True, help="Add published reference rows (compared by % of optimal).")
@click.option("--out", type=click.Path(file_okay=False), help="Directory for the table and plots.")
@click.option("--results-dir", type=click.Path(file_okay=False), envvar="NANOTUNE_RESULTS",
              help="Results root, searched when DIRECTORY is not given [default: ./results].")
def command(directory, anchors, out, results_dir):
    """Table and plots over every bench result under DIRECTORY (default: the results root)."""
    from nanotune.console import console
    from nanotune.report.compare import compare_and_show
    from nanotune.results.store import find_results, new_run_dir, results_root

    root = Path(directory) if directory else results_root(results_dir)
    found = find_results(root, kind="bench")
    if not found:
        raise UserError(f"no bench results (result.json of kind 'bench') under {root}")
    out_dir = Path(out) if out else new_run_dir("report", root=results_dir)
    try:
        compare_and_show([str(p) for p in found], out_dir, anchors, f"nanotune report: {root}", console,
                         skip_bad=True)
    except ValueError as e:
        raise UserError(str(e)) from None
