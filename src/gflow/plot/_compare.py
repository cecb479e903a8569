"""Figure of discrete runs against the flow: loss curves with event timelines, distance, sharpness."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..analysis._stages import detect_stages
from ._figures import EVENT_COLORS, STYLE


def comparison_figure(flow, runs: list, comparisons: list):
    """`runs` (Trajectories from `gflow.train`) and their `comparisons` against `flow`."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(4, 1, figsize=(6.4, 9.0), sharex=True, constrained_layout=True,
                                 gridspec_kw={"height_ratios": [3, 1.6, 2, 2]})
        colors = plt.cm.tab10(np.arange(len(runs) + 1) % 10)
        ax = axes[0]
        pos = flow.times > 0
        ax.plot(flow.times[pos], flow.loss[pos], color="k", lw=2.2, label="gradient flow")
        for c, run, color in zip(comparisons, runs, colors[1:], strict=True):
            p = run.times > 0
            ax.plot(run.times[p], run.loss[p], color=color, lw=1.1, label=c.label)
        ax.set_ylabel("population loss")
        ax.legend(frameon=False, fontsize=7)
        ax.set_title("discrete training against the gradient flow (time t = lr x step)")

        ax = axes[1]
        rows = [("flow", flow, "k")] + [(c.label, r, col) for c, r, col in zip(comparisons, runs, colors[1:],
                                                                              strict=True)]
        for y, (label, traj, _color) in enumerate(rows):
            for e in detect_stages(traj):
                if e.kind in EVENT_COLORS and e.time > 0:
                    ax.plot(e.time, y, marker="|", ms=12, mew=2, color=EVENT_COLORS[e.kind])
        ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=6.5)
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.invert_yaxis()
        handles = [plt.Line2D([], [], color=c, marker="|", ls="", ms=8, mew=2, label=k.replace("_", " "))
                   for k, c in EVENT_COLORS.items()]
        ax.legend(handles=handles, ncol=5, fontsize=6.5, frameon=False, loc="upper center",
                  bbox_to_anchor=(0.5, 1.25))

        ax = axes[2]
        for c, color in zip(comparisons, colors[1:], strict=True):
            p = c.times > 0
            ax.plot(c.times[p], c.distance[p], color=color, lw=1.1)
        ax.set_yscale("log")
        ax.set_ylabel("$\\|\\theta - \\theta_{flow}\\| / \\|\\theta_{flow}\\|$")

        ax = axes[3]
        c0 = comparisons[0]
        ax.plot(c0.sharpness_times, c0.sharpness_flow, color="k", lw=2, marker="o", ms=3, label="flow")
        for c, color in zip(comparisons, colors[1:], strict=True):
            ax.plot(c.sharpness_times, c.sharpness_discrete, color=color, lw=1, marker=".", ms=3)
            if c.eos_line is not None:
                ax.axhline(c.eos_line, color=color, ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_ylabel("sharpness $\\lambda_{max}$\n(dotted: 2/lr)")
        ax.set_xscale("log")
        ax.set_xlabel("flow time $t$")
    return fig
