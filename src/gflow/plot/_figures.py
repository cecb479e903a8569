"""Publication figures of a trajectory: overview on a shared log-time axis, attention heatmaps at
each event, and the Hessian spectrum at each plateau. Each function returns the matplotlib Figure;
`save_figure` writes PNG and PDF side by side."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # figures are written to files; no display is needed or assumed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..analysis._linearize import PlateauEscape  # noqa: E402
from ..analysis._metrics import Metrics  # noqa: E402
from ..analysis._stages import Event  # noqa: E402

STYLE = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 7.5, "xtick.labelsize": 8,
         "ytick.labelsize": 8, "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": 150,
         "savefig.dpi": 200, "savefig.bbox": "tight"}
EVENT_COLORS = {"condensation": "tab:green", "focus_onset": "tab:orange", "focus_peak": "tab:red",
                "dilution": "tab:purple", "escape": "tab:blue"}


def save_figure(fig, path_stem: str | os.PathLike) -> list[str]:
    """Write `fig` as `<stem>.png` and `<stem>.pdf`; returns both paths."""
    stem = os.fspath(path_stem)
    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    paths = [stem + ".png", stem + ".pdf"]
    for p in paths:
        fig.savefig(p)
    return paths


def _log_times(m: Metrics) -> tuple[np.ndarray, np.ndarray]:
    keep = m.times > 0
    return np.flatnonzero(keep), m.times[keep]


def _mark_events(ax, events: list[Event], label: bool = False):
    seen = set()
    for e in events:
        if e.kind in EVENT_COLORS and e.time > 0:
            ax.axvline(e.time, color=EVENT_COLORS[e.kind], lw=0.8, ls="--", alpha=0.8,
                       label=e.kind.replace("_", " ") if label and e.kind not in seen else None)
            seen.add(e.kind)


def overview_figure(m: Metrics, events: list[Event], *, entropy_rate: float, unigram_entropy: float,
                    title: str | None = None):
    """Loss with reference lines and plateau bands; singular values of W_E and W_U; focus index and
    key masses $m_b$; all on one log-time axis with the detected events marked."""
    idx, t = _log_times(m)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(4, 1, figsize=(6.4, 8.0), sharex=True, constrained_layout=True)
        ax = axes[0]
        for e in events:
            if e.kind == "plateau":
                ax.axvspan(max(e.details["start"], t[0]), e.details["end"], color="0.9", lw=0)
        ax.plot(t, m.loss[idx], color="k", lw=1.4, label="loss")
        ax.axhline(unigram_entropy, color="tab:gray", ls=":", lw=1, label=f"unigram entropy {unigram_entropy:.3f}")
        ax.axhline(entropy_rate, color="tab:gray", ls="-.", lw=1, label=f"entropy rate {entropy_rate:.3f}")
        ax.set_ylabel("loss (nats)")
        _mark_events(ax, events, label=True)
        ax.legend(loc="upper right", ncol=2, frameon=False)
        ax.set_title(title or "gradient flow: stages of learning (grey bands: plateaus)")

        ax = axes[1]
        for k in range(m.sv_E.shape[1]):
            ax.plot(t, m.sv_E[idx, k], color=plt.cm.viridis(k / max(1, m.sv_E.shape[1] - 1)), lw=1.2,
                    label=f"$\\sigma_{k + 1}(W_E)$")
        for k in range(m.sv_U.shape[1]):
            ax.plot(t, m.sv_U[idx, k], color=plt.cm.viridis(k / max(1, m.sv_U.shape[1] - 1)), lw=1, ls="--")
        ax.set_yscale("log")
        ax.set_ylabel("singular values\n(solid $W_E$, dashed $W_U$)")
        _mark_events(ax, events)
        ax.legend(loc="lower right", ncol=2, frameon=False)

        ax = axes[2]
        if m.focus is not None:
            ax.plot(t, m.focus[idx], color="tab:red", lw=1.4)
            ax.set_ylabel("focus index $F$")
        else:
            ax.plot(t, m.max_score[idx], color="tab:red", lw=1.4)
            ax.set_ylabel("max |score|")
        _mark_events(ax, events)

        ax = axes[3]
        if m.key_mass is not None:
            mass = m.key_mass.mean(axis=1)
            for b in range(mass.shape[1]):
                ax.plot(t, mass[idx, b], lw=1.2, label=f"$m_{{{b}}}$ ($\\pi_{{{b}}}$ = {m.pi[b]:.3g})")
            ax.set_ylabel("attention mass $m_b$")
            ax.legend(loc="center left", frameon=False)
        else:
            ax.plot(t, m.qk_change[idx], lw=1.2)
            ax.set_ylabel("rel. change of $W_Q, W_K$")
        _mark_events(ax, events)
        ax.set_xscale("log")
        ax.set_xlabel("flow time $t$")
    return fig


def attention_figure(m: Metrics, events: list[Event]):
    """Type-level attention $\\alpha(a, b)$ (head-averaged) at each detected event."""
    shown = [e for e in events if e.kind != "plateau"]
    if m.attention is None:
        maps = m.position_attention.mean(axis=1)
        xlabel, ylabel = "key position", "query position"
    else:
        maps = m.attention.mean(axis=1)
        xlabel, ylabel = "key token $b$", "query token $a$"
    n = max(1, len(shown))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, n, figsize=(1.9 * n + 0.8, 2.3), constrained_layout=True, squeeze=False)
        for ax, e in zip(axes[0], shown, strict=False):
            im = ax.imshow(maps[m.at(e.time)], vmin=0, vmax=1, cmap="magma")
            ax.set_title(f"{e.kind.replace('_', ' ')}\n$t$ = {e.time:.3g}")
            ax.set_xlabel(xlabel)
            ax.set_xticks(range(maps.shape[-1]))
            ax.set_yticks(range(maps.shape[-2]))
        axes[0][0].set_ylabel(ylabel)
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="attention")
    return fig


def hessian_figure(rows: list[PlateauEscape]):
    """Sorted Hessian eigenvalues at each plateau (symlog axis: negative directions are the saddle's)."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.2, 3.0), constrained_layout=True)
        for r in rows:
            ax.plot(np.arange(len(r.spectrum)), r.spectrum, marker=".", ms=3, lw=0.8,
                    label=f"plateau {r.plateau} (t = {r.entry:.3g}; index {r.saddle_index})")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_yscale("symlog", linthresh=1e-4)
        ax.set_xlabel("eigenvalue index (ascending)")
        ax.set_ylabel("Hessian eigenvalue")
        ax.set_title("Hessian spectrum at each plateau")
        ax.legend(frameon=False)
    return fig
