"""Publication figures of a trajectory: overview on a shared log-time axis, attention heatmaps at the
events, and the Hessian spectrum at each plateau.

Each function returns a matplotlib `Figure` built without pyplot (no global figure registry, no
backend chosen on import: importing gflow leaves matplotlib as the user set it); `save_figure`
writes PNG and PDF side by side. Legends sit outside the data; weak events are drawn dotted.
"""

from __future__ import annotations

import math
import os

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..analysis import EVENT_COLORS, Event, Metrics, PlateauEscape
from ._writer import write_png_and_pdf

STYLE = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 7.5, "xtick.labelsize": 8,
         "ytick.labelsize": 8, "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": 150,
         "savefig.dpi": 200, "savefig.bbox": "tight"}
VIRIDIS = matplotlib.colormaps["viridis"]
OUTSIDE = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "frameon": False, "borderaxespad": 0.0}
"""Legend placement: to the right of the axes, never over the data."""
MAX_PANELS, PANELS_PER_ROW = 8, 4
COLOURED_KEYS = 10
"""Key tokens drawn in colour (those that ever receive the most attention mass); the rest are grey:
ten colours stay distinguishable, sixteen do not."""


def save_figure(fig, path_stem: str | os.PathLike) -> list[str]:
    """Write `fig` as `<stem>.png` and `<stem>.pdf`; returns both paths."""
    return write_png_and_pdf(fig, path_stem)


def new_figure(rows: int = 1, cols: int = 1, **kw):
    """A constrained-layout `Figure` and its axes, made without pyplot."""
    fig = Figure(figsize=kw.pop("figsize"), layout="constrained")
    return fig, fig.subplots(rows, cols, **kw)


def _log_times(m: Metrics) -> tuple[np.ndarray, np.ndarray]:
    keep = m.times > 0
    return np.flatnonzero(keep), m.times[keep]


COINCIDENT = 1e-3
"""Events closer than this in log time share one line: its dashes alternate between their colours."""


def mark_events(ax, events: list[Event]):
    """A vertical line per event, dashed (dotted when weak). Events at the same time (within
    `COINCIDENT` in log time) share the line: each draws every n-th dash, so all colours show."""
    shown = [e for e in events if e.kind in EVENT_COLORS and e.time > 0]
    groups: list[list[Event]] = []
    for e in sorted(shown, key=lambda e: e.time):
        if groups and abs(math.log(e.time / groups[-1][0].time)) < COINCIDENT:
            groups[-1].append(e)
        else:
            groups.append([e])
    for group in groups:
        n = len(group)
        for k, e in enumerate(group):
            on, off = (1.0, 1.5) if e.weak else (4.0, 3.0)
            dashes = (k * (on + off), (on, off + (n - 1) * (on + off)))  # dash k of every n
            ax.axvline(e.time, color=EVENT_COLORS[e.kind], lw=0.9 if not e.weak else 0.7, ls=dashes, alpha=0.85)


def event_legend(ax, events: list[Event]):
    """Legend handles of the event kinds drawn, as vertical ticks (a horizontal dashed line would read
    as a reference level), and a text-only note when some events are weak."""
    kinds = [k for k in EVENT_COLORS if any(e.kind == k for e in events)]
    handles = [Line2D([], [], color=EVENT_COLORS[k], ls="", marker="|", ms=9, mew=1.2, label=k.replace("_", " "))
               for k in kinds]
    if any(e.weak for e in events):
        handles.append(Line2D([], [], ls="", marker="", label="weak events: dotted vertical lines"))
    return handles


def draw_event_rows(ax, rows: list[tuple[str, list[Event]]]):
    """One row of event ticks per run (`(label, events)`, top to bottom) on a log-time axis, coloured
    by kind, weak events thin; the legend of kinds outside the axes."""
    for y, (_label, events) in enumerate(rows):
        for e in events:
            if e.kind in EVENT_COLORS and e.time > 0:
                ax.plot(e.time, y, marker="|", ms=12, mew=2 if not e.weak else 1, color=EVENT_COLORS[e.kind])
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=6.5)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.invert_yaxis()
    shown = [k for k in EVENT_COLORS if any(e.kind == k for _, events in rows for e in events)]
    handles = [Line2D([], [], color=EVENT_COLORS[k], marker="|", ls="", ms=8, mew=2, label=k.replace("_", " "))
               for k in shown]
    ax.legend(handles=handles, title="events (thin: weak)", **OUTSIDE)


def overview_figure(m: Metrics, events: list[Event], *, entropy_rate: float | None = None,
                    unigram_entropy: float | None = None, reference_levels: dict[str, float] | None = None,
                    title: str | None = None):
    """Loss with reference lines and plateau bands; singular values of W_E and W_U; focus index and
    key masses $m_b$; all on one log-time axis with the detected events marked.

    The reference lines are `reference_levels` (label -> loss; the data source's
    `reference_levels()`: the first is the best possible loss), or the `entropy_rate` and
    `unigram_entropy` given."""
    idx, t = _log_times(m)
    if reference_levels is None:
        reference_levels = {name: v for name, v in (("entropy rate", entropy_rate),
                                                    ("unigram entropy", unigram_entropy)) if v is not None}
    with matplotlib.rc_context(STYLE):
        fig, axes = new_figure(4, 1, figsize=(7.4, 8.0), sharex=True)
        ax = axes[0]
        for e in events:
            if e.kind == "plateau" and len(t) and e.details["end"] > max(e.details["start"], t[0]):
                ax.axvspan(max(e.details["start"], t[0]), e.details["end"], color="0.92", lw=0)
        handles = [ax.plot(t, m.loss[idx], color="k", lw=1.4, label="loss")[0]]
        for (name, level), ls in zip(reference_levels.items(), ("-.", ":", "--", (0, (1, 3))), strict=False):
            handles.append(ax.axhline(level, color="tab:gray", ls=ls, lw=1, label=f"{name} {level:.3f}"))
        ax.set_ylabel("loss (nats)")
        mark_events(ax, events)
        ax.legend(handles=handles + event_legend(ax, events), **OUTSIDE)
        ax.set_title(title or "gradient flow: stages of learning (grey bands: plateaus)")

        ax = axes[1]
        for k in range(m.sv_E.shape[1]):
            ax.plot(t, m.sv_E[idx, k], color=VIRIDIS(k / max(1, m.sv_E.shape[1] - 1)), lw=1.2,
                    label=f"$\\sigma_{k + 1}$")
        for k in range(m.sv_U.shape[1]):
            ax.plot(t, m.sv_U[idx, k], color=VIRIDIS(k / max(1, m.sv_U.shape[1] - 1)), lw=1, ls="--")
        ax.set_yscale("log")
        ax.set_ylabel("singular values\n(solid $W_E$, dashed " + ("$W_U = W_E^\\top$)" if m.tied else "$W_U$)"))
        mark_events(ax, events)
        ax.legend(**OUTSIDE)

        ax = axes[2]
        V = len(m.pi)
        if m.focus is not None:
            if m.focus_per_head is not None and m.focus_per_head.shape[1] > 1:
                for k in range(m.focus_per_head.shape[1]):
                    ax.plot(t, m.focus_per_head[idx, k], lw=0.9, alpha=0.6, label=f"head {k + 1}")
            ax.plot(t, m.focus[idx], color="tab:red", lw=1.4, label="mean" if m.focus_per_head is not None
                    and m.focus_per_head.shape[1] > 1 else None)
            # A focus index of round-off size must not fill the panel: at least 1% of ln V tall.
            shown = m.focus if m.focus_per_head is None else np.concatenate([m.focus[:, None], m.focus_per_head], 1)
            top = max(float(np.max(shown[idx], initial=0.0)) * 1.08, 0.01 * math.log(V))
            ax.set_ylim(min(0.0, float(np.min(shown[idx], initial=0.0))), top)
            ax.set_ylabel("focus index $F$")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(**OUTSIDE)
        else:
            ax.plot(t, m.max_score[idx], color="tab:red", lw=1.4)
            ax.set_ylabel("max |score|")
        mark_events(ax, events)

        ax = axes[3]
        labels = m.token_labels()
        if m.key_mass is not None:
            mass = m.key_mass.mean(axis=1)
            coloured = set(np.argsort(-mass[idx].max(axis=0, initial=0.0))[:COLOURED_KEYS].tolist())
            palette = matplotlib.colormaps["tab10"]
            rest = [b for b in range(mass.shape[1]) if b not in coloured]
            for n, b in enumerate(sorted(coloured)):
                ax.plot(t, mass[idx, b], lw=1.2, color=palette(n), label=f"{labels[b]} ($\\pi$ = {m.pi[b]:.3g})")
            for n, b in enumerate(rest):
                ax.plot(t, mass[idx, b], lw=0.7, color="0.7",
                        label=f"{len(rest)} other keys (grey)" if n == 0 else None)
            ax.set_ylabel("attention mass $m_b$")
            ax.legend(title="key token b", **OUTSIDE)
        else:
            ax.plot(t, m.qk_change[idx], lw=1.2)
            ax.set_ylabel("rel. change of $W_Q, W_K$")
        mark_events(ax, events)
        if len(t):
            ax.set_xscale("log")
        else:  # interrupted before the first save after t = 0
            axes[0].text(0.5, 0.5, "nothing saved after t = 0", transform=axes[0].transAxes, ha="center")
        ax.set_xlabel("flow time $t$")
    return fig


def _panels(events: list[Event], m: Metrics) -> list[tuple[str, float]]:
    """The attention maps worth showing: one per distinct event time (weak events and plateaus left
    out), at most `MAX_PANELS`: the attention events first (condensation, focus, dilution), then
    escapes, earliest first; the last saved state when there is no event."""
    merged: list[tuple[str, float, bool]] = []  # (title, time, is an attention event)
    for e in events:
        if e.kind == "plateau" or e.weak or e.kind not in EVENT_COLORS:
            continue
        name, attention = e.kind.replace("_", " "), e.kind != "escape"
        if merged and abs(math.log(max(e.time, 1e-300) / max(merged[-1][1], 1e-300))) < 1e-6:
            merged[-1] = (merged[-1][0] + " + " + name, merged[-1][1], merged[-1][2] or attention)
        else:
            merged.append((name, e.time, attention))
    first = [x for x in merged if x[2]][:MAX_PANELS]
    rest = [x for x in merged if not x[2]][: MAX_PANELS - len(first)]
    chosen = sorted(first + rest, key=lambda x: x[1])
    if not chosen:
        return [(f"last saved state (no event)\n$t$ = {time_label(float(m.times[-1]))}", float(m.times[-1]))]
    return [(f"{name}\n$t$ = {time_label(t)}", t) for name, t, _ in chosen]


def time_label(t: float) -> str:
    """A time for a panel title, in one format whatever its size: three significant digits, written
    out between 0.01 and 10^4, as $m \\times 10^{k}$ outside (never Python's `1e+04`)."""
    if t == 0:
        return "0"
    if 1e3 <= abs(t) < 1e4:
        return f"{t:.0f}"
    if 1e-2 <= abs(t) < 1e3:
        return f"{t:.3g}"
    exponent = math.floor(math.log10(abs(t)))
    mantissa = f"{t / 10.0**exponent:.3g}"
    return f"$10^{{{exponent}}}$" if mantissa == "1" else f"${mantissa} \\times 10^{{{exponent}}}$"


def attention_figure(m: Metrics, events: list[Event]):
    """Attention $\\alpha(a, b)$ (head-averaged, under the run's loss) at the events, in rows of at most
    four panels (readable at column width); at the last saved time when there is no event."""
    shown = _panels(events, m)
    maps = m.attention.mean(axis=1) if m.attention is not None else m.position_attention.mean(axis=1)
    by_token = m.attention is not None
    n = len(shown)
    cols = min(n, PANELS_PER_ROW)
    rows = math.ceil(n / cols)
    labels = m.token_labels()
    with matplotlib.rc_context(STYLE):
        fig, axes = new_figure(rows, cols, figsize=(1.75 * cols + 0.9, 1.95 * rows + 0.2), squeeze=False)
        for ax in axes.ravel()[n:]:
            ax.set_visible(False)
        for ax, (title, t) in zip(axes.ravel(), shown, strict=False):
            im = ax.imshow(maps[m.at(t)], vmin=0, vmax=1, cmap="magma")
            ax.set_title(title, fontsize=7.5)
            ticks = range(maps.shape[-1])
            if by_token:
                ax.set_xticks(ticks, labels, rotation=90 if max(map(len, labels)) > 2 else 0)
                ax.set_yticks(ticks, labels)
            else:
                ax.set_xticks(ticks)
                ax.set_yticks(ticks)
        for ax in axes[:, 0]:
            ax.set_ylabel("query token $a$" if by_token else "query position")
        for ax in axes[-1]:
            ax.set_xlabel("key token $b$" if by_token else "key position")
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="attention")
    return fig


LEGEND_ROW_CHARACTERS = 100
"""Characters of legend text (7 pt) that fit side by side under a 6.4-inch figure."""


def hessian_figure(rows: list[PlateauEscape]):
    """Sorted Hessian eigenvalues at each plateau's saddle, located from the state the prediction was
    made from (symlog axis: negative directions are the saddle's); the legend says from which state."""
    with matplotlib.rc_context(STYLE):
        fig, ax = new_figure(figsize=(6.4, 3.4 + 0.16 * len(rows)))
        labels = []
        for r in rows:
            end = ", where the run ends" if r.final else ""
            negative = ("no critical point located" if r.saddle_index < 0 else
                        f"{r.saddle_index} negative" if r.saddle_index else "none negative")
            spectrum = r.prediction.spectrum
            labels.append(f"plateau {r.plateau}: from $t$ = {time_label(r.at)}{end} ({negative})")
            ax.plot(np.arange(len(spectrum)), spectrum, marker=".", ms=3, lw=0.8, label=labels[-1])
        ax.axhline(0, color="k", lw=0.6)
        ax.set_yscale("symlog", linthresh=1e-4)
        ax.set_xlabel("eigenvalue number, in ascending order")
        ax.set_ylabel("Hessian eigenvalue")
        ax.set_title("Hessian spectrum at each plateau's saddle")
        if rows:  # below the axes: the full width for the data, the labels as long as they need
            # side by side only while they fit the figure's width (about 100 characters at this size);
            # one under the other otherwise: a wider legend was cut off at both edges
            side_by_side = sum(len(label) for label in labels) + 6 * len(labels) <= LEGEND_ROW_CHARACTERS
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=len(rows) if side_by_side else 1,
                      frameon=False, fontsize=7)
        else:
            ax.text(0.5, 0.5, "no plateau before the end of the run", transform=ax.transAxes, ha="center")
    return fig
