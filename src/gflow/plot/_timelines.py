"""Stage timelines of several runs on one log-time axis: how far each run's loss has fallen, its focus
index, and its detected events, so that runs on different data (a chain, text windows, a synthetic
chain) can be set side by side although their loss levels differ."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np

from ..analysis import Event, Metrics
from ._figures import OUTSIDE, STYLE, draw_event_rows, mark_events, new_figure


def loss_progress(m: Metrics) -> np.ndarray:
    """$(L_0 - L(t)) / (L_0 - \\min_t L)$: the fraction of the run's own total drop reached by time t
    (a run's loss levels depend on its data; this fraction does not)."""
    drop = m.loss[0] - np.min(m.loss)
    return (m.loss[0] - m.loss) / drop if drop > 0 else np.zeros_like(m.loss)


def timelines_figure(runs: Sequence[tuple[str, Metrics, list[Event]]], *, title: str | None = None):
    """`runs`: `(label, metrics, events)` per run. Panels: the fraction of each run's loss drop, the
    focus index $F$ (nats), and one row of event ticks per run; events of the first run are also
    marked as lines in the upper panels (the reference the others are read against)."""
    if not runs:
        raise ValueError("`runs` must hold at least one (label, metrics, events) triple.")
    with matplotlib.rc_context(STYLE):
        fig, axes = new_figure(3, 1, figsize=(7.6, 6.6), sharex=True, gridspec_kw={"height_ratios": [2.2, 2, 1.3]})
        colors = matplotlib.colormaps["tab10"](np.arange(len(runs)) % 10)
        dashes = ("-", (0, (5, 2)), (0, (2, 1.5)), (0, (6, 2, 1, 2)))
        for (label, m, _), color, ls in zip(runs, colors, dashes * len(runs), strict=False):
            keep = m.times > 0
            axes[0].plot(m.times[keep], loss_progress(m)[keep], color=color, ls=ls, lw=1.4, label=label)
            if m.focus is not None:
                axes[1].plot(m.times[keep], m.focus[keep], color=color, ls=ls, lw=1.4, label=label)
        for ax in axes[:2]:
            mark_events(ax, runs[0][2])
        axes[0].set_ylabel("fraction of the run's\nloss drop")
        axes[0].legend(**OUTSIDE)
        axes[0].set_title(title or "stage timelines (lines: events of the first run)")
        axes[1].set_ylabel("focus index $F$ (nats)")
        draw_event_rows(axes[2], [(label, events) for label, _, events in runs])
        axes[2].set_xscale("log")
        axes[2].set_xlabel("time $t$ (flow time; lr x step for discrete runs)")
    return fig
