"""Figure of discrete runs against the flow: loss curves with event timelines, distance, sharpness.

Runs that overlap (GD at small learning rates sits on the flow) stay distinguishable: each run has
its own colour *and* dash pattern and is drawn over the flow's thick grey line; legends sit outside.
"""

from __future__ import annotations

import matplotlib
import numpy as np

from ._figures import OUTSIDE, STYLE, draw_event_rows, new_figure

DASHES = ("-", (0, (5, 2)), (0, (2, 1.5)), (0, (6, 2, 1, 2)), (0, (1, 1)), (0, (8, 3)), (0, (3, 1, 1, 1, 1, 1)))


def comparison_figure(flow, runs: list, comparisons: list):
    """`runs` (Trajectories from `gflow.train`) and their `comparisons` against `flow` (whose events
    the event timelines draw)."""
    with matplotlib.rc_context(STYLE):
        fig, axes = new_figure(4, 1, figsize=(7.6, 9.0), sharex=True, gridspec_kw={"height_ratios": [3, 1.6, 2, 2]})
        colors = matplotlib.colormaps["tab10"](np.arange(len(runs)) % 10)
        styles = [{"color": c, "ls": DASHES[i % len(DASHES)], "lw": 1.2} for i, c in enumerate(colors)]
        ax = axes[0]
        pos = flow.times > 0
        ax.plot(flow.times[pos], flow.loss[pos], color="0.55", lw=3.2, label="gradient flow", zorder=1)
        for c, run, style in zip(comparisons, runs, styles, strict=True):
            p = run.times > 0
            ax.plot(run.times[p], run.loss[p], label=c.label, zorder=2, **style)
        ax.set_ylabel("population loss")
        ax.legend(**OUTSIDE)
        ax.set_title("discrete training against the gradient flow (time t = lr x step)")

        ax = axes[1]
        rows = [("flow", comparisons[0].flow_events)] + [(c.label, c.discrete_events) for c in comparisons]
        draw_event_rows(ax, rows)

        ax = axes[2]
        for c, style in zip(comparisons, styles, strict=True):
            p = c.times > 0
            ax.plot(c.times[p], c.distance[p], **style)
        ax.set_yscale("log")
        ax.set_ylabel("$\\|\\theta - \\theta_{flow}\\| / \\|\\theta_{flow}\\|$")

        ax = axes[3]
        c0 = comparisons[0]
        ax.plot(c0.sharpness_times, c0.sharpness_flow, color="0.55", lw=3.0, marker="o", ms=3, label="flow")
        for c, style in zip(comparisons, styles, strict=True):
            ax.plot(c.sharpness_times, c.sharpness_discrete, marker=".", ms=3, **style)
        # One edge-of-stability line per learning rate, grey and labelled: runs that share an lr share
        # the line, so no run's colour can stand for another's.
        for level in sorted({c.eos_line for c in comparisons if c.eos_line is not None}):
            ax.axhline(level, color="0.35", ls=":", lw=1)
            ax.annotate(f"2/lr, lr = {2 / level:g}", (1.0, level), xycoords=("axes fraction", "data"),
                        xytext=(3, 0), textcoords="offset points", va="center", fontsize=6.5, color="0.35")
        ax.set_yscale("log")
        ax.set_ylabel("sharpness $\\lambda_{max}$\n(dotted: 2/lr)")
        ax.set_xscale("log")
        ax.set_xlabel("flow time $t$")
    return fig
