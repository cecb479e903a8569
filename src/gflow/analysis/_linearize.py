"""Stage-wise linearisation: the Hessian of the loss at a point, and escape times from plateaus.

Near a critical point $\\theta^*$ the flow is $\\dot\\delta \\approx -H \\delta$, so the component of
$\\delta = \\theta - \\theta^*$ along an eigenvector with eigenvalue $\\lambda < 0$ grows like
$e^{|\\lambda| t}$. Leaving a plateau takes about $\\log(c_{exit} / c_{entry}) / |\\lambda|$ for the most
negative $\\lambda$: the prediction compared with the observed escape in `plateau_linearization`.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from ..record import Trajectory
from ._events import Event
from ._hessian import linearize_flat
from ._stages import detect_stages


@dataclasses.dataclass(frozen=True)
class PlateauEscape:
    """Predicted against observed escape from one plateau (see the module docstring).

    `observed_escape` is the next escape's time (half-way down its drop), `nan` for the plateau a
    run ends on; `entry` is where the plateau starts (the previous drop has slowed to a tenth of its
    peak rate); `at` is the time of the plateau's slowest point, where the Hessian is taken."""

    plateau: int
    entry: float
    observed_escape: float
    predicted_escape: float
    saddle_index: int
    escape_rate: float
    lambda_min: float
    lambda_max: float
    spectrum: np.ndarray
    at: float = float("nan")
    final: bool = False

    @property
    def ratio(self) -> float:
        """Predicted over observed plateau duration (1 is a perfect prediction; nan for the final one)."""
        if not math.isfinite(self.observed_escape):
            return float("nan")
        return (self.predicted_escape - self.entry) / max(self.observed_escape - self.entry, np.finfo(float).tiny)


def plateau_linearization(traj: Trajectory, events: list[Event] | None = None, *,
                          method: str = "auto") -> list[PlateauEscape]:
    """Linearise at every plateau of `traj` and predict its escape time.

    The saddle is approximated by the state at the plateau's slowest point; the unstable component is
    the projection of $\\theta(t) - \\theta_{slow}$ on the most negative eigenvector, measured at
    plateau entry and at the saved point nearest the observed escape. The prediction is entry +
    log(ratio) / rate. The plateau a run ends on is included when it is a saddle: its prediction is
    the final-state estimate of `detect_stages` (and nothing is observed).
    """
    events = detect_stages(traj) if events is None else events
    layout, fn, ys, t = traj.layout, traj.loss_function(), traj.flat_params(), traj.times
    escapes = [e for e in events if e.kind == "escape"]
    out = []
    for p, e in enumerate(e for e in events if e.kind == "plateau"):
        a, slow = e.details["start_index"], e.details.get("slowest_index", e.details["start_index"])
        final = e.details["final"]
        if final and not e.details.get("saddle_index"):
            continue
        lin = linearize_flat(fn, layout, jnp.asarray(ys[slow]), method=method)
        if final:
            predicted, observed = e.details.get("predicted_escape", math.inf), math.nan
        else:
            observed = e.details.get("next_escape") or (escapes[p].time if p < len(escapes) else math.nan)
            b = int(np.argmin(np.abs(t - observed))) if math.isfinite(observed) else e.details["end_index"]
            v = lin.eigenvectors[:, 0]
            c_in, c_out = abs(v @ (ys[a] - ys[slow])), abs(v @ (ys[b] - ys[slow]))
            ok = lin.escape_rate > 0 and c_in > 0 and c_out > 0
            predicted = float(t[a] + math.log(c_out / c_in) / lin.escape_rate) if ok else math.inf
        out.append(PlateauEscape(plateau=p, entry=float(t[a]), observed_escape=float(observed),
                                 predicted_escape=float(predicted), saddle_index=lin.saddle_index,
                                 escape_rate=lin.escape_rate, lambda_min=float(lin.eigenvalues[0]),
                                 lambda_max=float(lin.eigenvalues[-1]), spectrum=lin.eigenvalues,
                                 at=float(t[slow]), final=final))
    return out


def linearization_table(rows: list[PlateauEscape]) -> str:
    """A Markdown table: per plateau, the Hessian's extremes and predicted against observed escape."""
    out = ["| plateau | entry | Hessian at | saddle index | lambda_min | lambda_max | predicted escape | "
           "observed escape | predicted/observed duration |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        observed = "— (run ends here)" if r.final else f"{r.observed_escape:.4g}"
        ratio = "—" if r.final else f"{r.ratio:.2f}"
        out.append(f"| {r.plateau} | {r.entry:.4g} | {r.at:.4g} | {r.saddle_index} | {r.lambda_min:.3g} | "
                   f"{r.lambda_max:.3g} | {r.predicted_escape:.4g} | {observed} | {ratio} |")
    return "\n".join(out)
