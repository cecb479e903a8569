"""Phase diagrams of a sweep: one summary column over the swept settings.

Two swept keys give a heat map (the first along x, the second along y, one cell per run, its value
written in it); one key gives a line; further keys are facets (one panel per combination of their
values). Cells are equally spaced by value index, labelled with the values, so log-spaced sweeps
(init scales) read naturally. Runs that did not finish are hatched grey, not coloured.
"""

from __future__ import annotations

import itertools
import math

import matplotlib
import numpy as np

from ._figures import OUTSIDE, STYLE, new_figure

PHASE_COLUMNS = {"loss_gap": "final loss minus the best possible (nats)", "final_loss": "final loss (nats)",
           "first_escape": "first escape time", "cycles": "cycles reached", "wall_s": "wall time (s)"}
"""Summary columns a phase diagram can show, with their axis labels."""


def _number(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _distinct(rows, key):
    seen = []
    for r in rows:
        if r[key] not in seen:
            seen.append(r[key])
    try:
        return sorted(seen)
    except TypeError:
        return seen


def _label(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def phase_diagram(rows: list[dict], keys: list[str], *, column: str = "loss_gap", title: str | None = None):
    """A figure of `column` over the swept `keys` of `rows` (a sweep's summary rows)."""
    if column not in PHASE_COLUMNS:
        raise ValueError(f"`column` must be one of {tuple(PHASE_COLUMNS)} (a numeric summary column); got {column!r}.")
    if not rows or not keys:
        raise ValueError("a phase diagram needs summary rows and at least one swept key.")
    missing = [k for k in keys if k not in rows[0]]
    if missing:
        raise ValueError(f"the summary rows have no column {missing[0]!r}; the swept keys are {list(rows[0])}.")
    axis_keys, facet_keys = keys[:2], keys[2:]
    facets = list(itertools.product(*(_distinct(rows, k) for k in facet_keys))) or [()]
    values = np.array([_number(r.get(column)) for r in rows])
    finite = values[np.isfinite(values)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    # a column spanning decades (a loss gap from 1e-16 to 1e-3) is coloured on a log scale, floored at
    # 1e-12 of its largest value: below that the difference is round-off, not a phase
    norm = None
    if finite.size and vmax > 0 and vmin >= 0 and vmax > 100 * max(vmin, vmax * 1e-12):
        norm = matplotlib.colors.LogNorm(vmin=max(vmin, vmax * 1e-12), vmax=vmax)
    with matplotlib.rc_context(STYLE):
        cols = min(len(facets), 3)
        n_rows = math.ceil(len(facets) / cols)
        fig, axes = new_figure(n_rows, cols, figsize=(3.6 * cols + 1.2, 3.0 * n_rows + 0.4), squeeze=False)
        for ax in axes.ravel()[len(facets):]:
            ax.set_visible(False)
        image = None
        for ax, facet in zip(axes.ravel(), facets, strict=False):
            chosen = [r for r in rows if all(r[k] == v for k, v in zip(facet_keys, facet, strict=True))]
            name = ", ".join(f"{k} = {_label(v)}" for k, v in zip(facet_keys, facet, strict=True))
            if len(axis_keys) == 1:
                _line(ax, chosen, axis_keys[0], column)
            else:
                image = _heat(ax, chosen, axis_keys, column, vmin, vmax, norm)
            if name:
                ax.set_title(name, fontsize=8)
        if image is not None:
            fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.85, label=PHASE_COLUMNS[column])
        fig.suptitle(title or f"{PHASE_COLUMNS[column]} over {' x '.join(axis_keys)}"
                     + (f" (panels: {', '.join(facet_keys)})" if facet_keys else ""), fontsize=9)
    return fig


def _line(ax, rows, key, column):
    xs = _distinct(rows, key)
    ys = [np.nanmean([_number(r[column]) for r in rows if r[key] == x] or [math.nan]) for x in xs]
    numeric = all(isinstance(x, int | float) for x in xs)
    ax.plot(xs if numeric else range(len(xs)), ys, marker="o", lw=1.2, color="tab:blue", label=column)
    if numeric and min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(range(len(xs)), [_label(x) for x in xs])
    ax.set_xlabel(key)
    ax.set_ylabel(PHASE_COLUMNS[column])
    ax.legend(**OUTSIDE)


def _heat(ax, rows, keys, column, vmin, vmax, norm=None):
    xs, ys = _distinct(rows, keys[0]), _distinct(rows, keys[1])
    grid = np.full((len(ys), len(xs)), np.nan)
    failed = np.zeros_like(grid, dtype=bool)
    for r in rows:
        i, j = ys.index(r[keys[1]]), xs.index(r[keys[0]])
        grid[i, j] = _number(r[column])
        failed[i, j] = r.get("status") != "success"
    shown = grid if norm is None else np.clip(grid, norm.vmin, None)
    image = ax.imshow(np.ma.masked_invalid(shown), origin="lower", cmap="viridis", aspect="auto",
                      **({"norm": norm} if norm is not None else {"vmin": vmin, "vmax": vmax}))
    ax.set_facecolor("0.85")
    for i in range(len(ys)):
        for j in range(len(xs)):
            text = "n/a" if not np.isfinite(grid[i, j]) else f"{grid[i, j]:.3g}"
            ax.text(j, i, text + ("\n(failed)" if failed[i, j] else ""), ha="center", va="center", fontsize=7,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75})
    ax.set_xticks(range(len(xs)), [_label(x) for x in xs])
    ax.set_yticks(range(len(ys)), [_label(y) for y in ys])
    ax.set_xlabel(keys[0])
    ax.set_ylabel(keys[1])
    return image
