"""`nanotune compare`: side-by-side table and plots over saved bench results. Thin over
nanotune.report.compare."""

from __future__ import annotations

from pathlib import Path

import click

from nanotune.errors import UserError


@click.command(name="compare")
@click.argument("results", nargs=-1, type=click.Path(exists=True))
@click.option("--anchors", is_flag=True,
              help="Add published reference rows (NanoFlow, vLLM; A100) compared by % of optimal.")
@click.option("--out", type=click.Path(file_okay=False), help="Directory for the table and plots "
                                                              "[default: a new results/<run-id>/].")
@click.option("--results-dir", type=click.Path(file_okay=False), envvar="NANOTUNE_RESULTS",
              help="Root for the default output directory [default: ./results].")
def command(results, anchors, out, results_dir):
    """Compare bench results (result.json files or run directories) side by side, with plots."""
    from nanotune.console import console
    from nanotune.report.compare import compare_and_show
    from nanotune.results.store import new_run_dir

    if not results:
        raise UserError("give one or more result.json files or run directories (or `nanotune report DIR`)")
    out_dir = Path(out) if out else new_run_dir("compare", root=results_dir)
    try:
        compare_and_show(list(results), out_dir, anchors, "nanotune compare", console)
    except ValueError as e:  # malformed or non-bench result file: the message names it
        raise UserError(str(e)) from None
