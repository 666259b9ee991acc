"""`python -m edge` is the `flamingo-edge` command."""

from edge.cli import main

main()
