"""Stage timelines of several runs on one log-time axis: how far each run's loss has fallen, its focus
index, and its detected events, so that runs on different data (a chain, text windows, a synthetic
chain) can be set side by side although their loss levels differ."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np

from ..analysis import Event, Metrics
from ._figures import OUTSIDE, STYLE, draw_event_rows, mark_events, new_figure

FLOOR = 1e-4
"""The loss panel's lower edge: a run within this fraction of its lowest loss has finished its drop."""


def loss_remaining(m: Metrics, lowest: float | None = None) -> np.ndarray:
    """$(L(t) - L_{low}) / (L_0 - L_{low})$ with $L_{low}$ = `lowest`, by default the run's own lowest
    loss: the fraction of the total drop still ahead at time t (1 at the start). A run's loss levels
    depend on its data; this fraction does not, and on a log axis the later, smaller drops show as
    clearly as the first. Give `lowest` for a run that stops early (a discrete run over part of its
    flow's horizon: the flow's lowest loss), or its own end would look like convergence."""
    low = float(np.min(m.loss)) if lowest is None else float(lowest)
    drop = m.loss[0] - low
    return (m.loss - low) / drop if drop > 0 else np.ones_like(m.loss)


def timelines_figure(runs: Sequence[tuple[str, Metrics, list[Event]]], *, title: str | None = None,
                     lowest: Sequence[float | None] | None = None):
    """`runs`: `(label, metrics, events)` per run. Panels: the fraction of each run's loss drop still
    ahead (log scale, floored at `FLOOR`), the focus index $F$ (nats), and one row of event ticks per
    run; events of the first run are also marked as lines in the upper panels (the reference the
    others are read against). `lowest`: per run, the loss its drop is measured down to (`None`:
    its own lowest; see `loss_remaining`)."""
    if not runs:
        raise ValueError("`runs` must hold at least one (label, metrics, events) triple.")
    lowest = [None] * len(runs) if lowest is None else list(lowest)
    if len(lowest) != len(runs):
        raise ValueError(f"`lowest` must give one level (or None) per run: {len(runs)}; got {len(lowest)}.")
    with matplotlib.rc_context(STYLE):
        fig, axes = new_figure(3, 1, figsize=(7.6, 6.6), sharex=True, gridspec_kw={"height_ratios": [2.2, 2, 1.3]})
        colors = matplotlib.colormaps["tab10"](np.arange(len(runs)) % 10)
        dashes = ("-", (0, (5, 2)), (0, (2, 1.5)), (0, (6, 2, 1, 2)))
        for (label, m, _), low, color, ls in zip(runs, lowest, colors, dashes * len(runs), strict=False):
            keep = m.times > 0
            remaining = np.maximum(loss_remaining(m, low)[keep], FLOOR)
            axes[0].plot(m.times[keep], remaining, color=color, ls=ls, lw=1.4, label=label)
            if m.focus is not None:
                axes[1].plot(m.times[keep], m.focus[keep], color=color, ls=ls, lw=1.4, label=label)
        for ax in axes[:2]:
            mark_events(ax, runs[0][2])
        axes[0].set_yscale("log")
        axes[0].set_ylim(FLOOR, 1.5)
        axes[0].set_ylabel("fraction of the run's\nloss drop still ahead")
        axes[0].legend(**OUTSIDE)
        axes[0].set_title(title or "stage timelines (lines: events of the first run)")
        axes[1].set_ylabel("focus index $F$ (nats)")
        draw_event_rows(axes[2], [(label, events) for label, _, events in runs])
        axes[2].set_xscale("log")
        axes[2].set_xlabel("time $t$ (flow time; lr x step for discrete runs)")
    return fig
