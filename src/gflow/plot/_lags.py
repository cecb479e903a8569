"""Figures of sparse high-order tasks (docs/tasks.md): the loss against the class ladder, the KL to
each restricted teacher, each head's attention to each lag block, and position maps at the events."""

from __future__ import annotations

import math

import matplotlib
import numpy as np

from ..analysis import Event, LagProbes
from ._figures import OUTSIDE, STYLE, event_legend, mark_events, new_figure

BLOCK_COLOURS = matplotlib.colormaps["tab10"]


def _format_time_axis(ax) -> None:
    ax.set_xscale("log")
    ax.grid(True, which="major", alpha=0.25, lw=0.5)


def lag_figure(probes: LagProbes, events: list[Event], *, title: str | None = None):
    """Three rows on one log-time axis: the loss with the k-block levels as dashed lines; the mean KL
    to each restricted teacher (log scale); and one panel per head with its attention to each block
    (dotted: the block's share under uniform attention). Events are vertical lines in every panel."""
    keep = probes.times > 0
    t = probes.times[keep]
    K, H = probes.mass.shape[-1], probes.mass.shape[1]
    with matplotlib.rc_context(STYLE):
        fig = matplotlib.figure.Figure(figsize=(2.1 * H + 1.6, 6.4), layout="constrained")
        grid = fig.add_gridspec(3, H, height_ratios=[1.2, 1.0, 1.0])
        ax_loss = fig.add_subplot(grid[0, :])
        ax_kl = fig.add_subplot(grid[1, :], sharex=ax_loss)
        heads = [fig.add_subplot(grid[2, h], sharex=ax_loss) for h in range(H)]
        ax_loss.plot(t, probes.loss[keep], color="k", lw=1.4, label="loss")
        for k, level in enumerate(probes.levels):
            ax_loss.axhline(level, color=_block_colour(k), ls="--", lw=0.8, label=_level_name(k, K))
        ax_loss.set_ylabel("loss (nats)")
        mark_events(ax_loss, events)
        ax_loss.legend(handles=ax_loss.get_legend_handles_labels()[0] + event_legend(ax_loss, events), **OUTSIDE)
        if title:
            ax_loss.set_title(title)
        floor = np.finfo(float).tiny
        for k in range(K + 1):
            ax_kl.plot(t, np.maximum(probes.kl[keep, k], floor), color=_block_colour(k), lw=1.2,
                       label=f"{k}-block teacher")
        ax_kl.set_yscale("log")
        ax_kl.set_ylabel("KL(teacher$_k$ ‖ model)")
        mark_events(ax_kl, events)
        ax_kl.legend(**OUTSIDE)
        for h, ax in enumerate(heads):
            for k in range(K):
                ax.plot(t, probes.mass[keep, h, k], color=_block_colour(k + 1), lw=1.2, label=f"block {k + 1}")
                ax.axhline(probes.share[k], color=_block_colour(k + 1), ls=":", lw=0.7)
            ax.set_ylim(0, 1)
            ax.set_title(f"head {h + 1}")
            ax.set_xlabel("time $t$")
            mark_events(ax, events)
            if h:
                ax.tick_params(labelleft=False)
        heads[0].set_ylabel("attention to block")
        heads[-1].legend(**OUTSIDE)
        for ax in (ax_loss, ax_kl, *heads):
            _format_time_axis(ax)
        for ax in (ax_loss, ax_kl):  # a shared time axis, and each panel keeps its own time labels
            ax.tick_params(labelbottom=True)
    return fig


def _level_name(k: int, K: int) -> str:
    return {0: "no context", 1: "block 1", K: "all blocks (best)"}.get(k, f"blocks 1..{k}")


def _block_colour(k: int):
    return BLOCK_COLOURS(k % 10)


def lag_attention_maps(probes: LagProbes, events: list[Event]):
    """Each head's attention by position (query row, key column; averaged over the contexts) at each
    event and at the end of the run: one row per time, one column per head."""
    times = [(f"{e.kind.replace('_', ' ')} t={e.time:.3g}", e.time) for e in events if e.time > 0]
    times.append((f"end t={probes.times[-1]:.3g}", float(probes.times[-1])))
    H = probes.position_attention.shape[1]
    rows = len(times)
    T = probes.position_attention.shape[-1]
    with matplotlib.rc_context(STYLE):
        fig, axes = new_figure(rows, H, figsize=(1.5 * H + 1.4, 1.45 * rows + 0.4), squeeze=False)
        for r, (label, time) in enumerate(times):
            i = int(np.argmin(np.abs(np.log(np.maximum(probes.times, 1e-300)) - math.log(time))))
            for h in range(H):
                ax = axes[r, h]
                im = ax.imshow(probes.position_attention[i, h], vmin=0, vmax=1, cmap="magma")
                ax.set_xticks(range(T))
                ax.set_yticks(range(T))
                if r == 0:
                    ax.set_title(f"head {h + 1}")
            axes[r, 0].set_ylabel(f"{label}\nquery pos.", fontsize=7)
        for ax in axes[-1]:
            ax.set_xlabel("key position")
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="attention")
    return fig
