"""Progress bars over save points or members, shared by every long loop (flows, ensembles, training)."""

from __future__ import annotations

import sys


def progress_bar(enabled: bool | None, total: int, start: int = 0, desc: str = "gflow", unit: str = "pt"):
    """A tqdm bar, or `None` when disabled (default: on when stderr is a terminal).

    Over save points the grid is log-spaced, so the bar shows progress in log-time."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc=desc, unit=unit, dynamic_ncols=True)
