"""`python -m gflow.app`: the `gflow` command."""

from ._cli import console_main

console_main()
