"""`python -m nanotune ...` runs the CLI (where the console script is not installed)."""

from nanotune.cli import main

main()
