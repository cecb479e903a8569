"""Progress bars and Ctrl-C over the save points of a long loop, shared by every such loop (the
flow's chunk loop, discrete training, ensembles)."""

from __future__ import annotations

import contextlib
import dataclasses
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


@dataclasses.dataclass
class SavePointLoop:
    """The state of a loop over save points: its bar (or `None`) and whether Ctrl-C stopped it."""

    bar: object | None
    interrupted: bool = False

    def advance(self, n: int, postfix: str | None = None) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix is not None:
                self.bar.set_postfix_str(postfix)


@contextlib.contextmanager
def save_point_loop(progress: bool | None, total: int, start: int = 0, desc: str = "gflow"):
    """Run a loop over save points with a progress bar; Ctrl-C inside ends the loop (the points
    computed so far are the caller's to keep) and sets `interrupted`; the bar is closed at the end."""
    loop = SavePointLoop(progress_bar(progress, total, start, desc))
    try:
        yield loop
    except KeyboardInterrupt:
        loop.interrupted = True
    finally:
        if loop.bar is not None:
            loop.bar.close()
