"""`python -m gflow.app`: the `gflow` command."""

from ._cli import main

raise SystemExit(main())
