"""Plateau by plateau: the a-priori escape prediction against the escape the run shows.

For each plateau of `detect_stages`, `predict_escape` (`_escape_prediction.py`) is asked from the
plateau's entry: the saddle is located from that state, its unstable component and the unstable
manifold give the escape time, and nothing later is used. Where the entry state is not yet in the
saddle's linear neighbourhood (the previous drop is still settling), the prediction is asked again
from later saved states of the same plateau (`ATTEMPTS` in all, spread in log time), each using
nothing past itself; the table says from when the prediction holds, or why none does.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..flow import RunPlan
from ..record import Trajectory
from ._escape_prediction import EscapePrediction, check_flow_trajectory, predict_escape
from ._events import Event
from ._stages import detect_stages

ATTEMPTS = 8
"""Saved states of a plateau from which a prediction is tried, entry first, spread in log time (a
state that fails the tests costs a Newton solve; the first that passes, an orbit)."""


@dataclasses.dataclass(frozen=True)
class PlateauEscape:
    """Predicted against observed escape from one plateau.

    `entry`: where the plateau starts (the previous drop has slowed to a tenth of its peak rate);
    `at`: the state the prediction is made from (the entry, or the first later state from which one
    holds); `observed_escape`: the next escape's time (half-way down its drop), nan for the plateau a
    run ends on; `prediction`: the `EscapePrediction` (its `failure` says why, when none holds)."""

    plateau: int
    entry: float
    observed_escape: float
    prediction: EscapePrediction
    final: bool = False

    @property
    def at(self) -> float:
        return self.prediction.at

    @property
    def predicted_escape(self) -> float:
        return self.prediction.predicted_escape

    @property
    def saddle_index(self) -> int:
        return self.prediction.saddle_index

    def _ratio(self, predicted: float, since: float) -> float:
        """Predicted over observed time from `since` to the escape (nan when either is missing)."""
        if not (math.isfinite(self.observed_escape) and math.isfinite(predicted)):
            return float("nan")
        return (predicted - since) / max(self.observed_escape - since, np.finfo(float).tiny)

    @property
    def ratio(self) -> float:
        """Predicted over observed plateau duration, from the entry (1 is a perfect prediction; nan for
        the final plateau and where no prediction holds)."""
        return self._ratio(self.predicted_escape, self.entry)

    @property
    def remaining_ratio(self) -> float:
        """Predicted over observed time left, from the state the prediction was made from: the score
        that does not credit the part of the plateau already behind that state."""
        return self._ratio(self.predicted_escape, self.at)

    @property
    def linear_ratio(self) -> float:
        """The same as `ratio` for the pure linearisation (exponential growth to the exit scale)."""
        return self._ratio(self.prediction.linear_escape, self.entry)


def _attempts(t: np.ndarray, a: int, b: int) -> list[int]:
    """Up to `ATTEMPTS` saved indices in [a, b], the entry first, spread evenly in log time."""
    if b <= a:
        return [a]
    lo = max(float(t[a]), float(t[t > 0][0]) if np.any(t > 0) else 1.0)
    targets = np.geomspace(lo, max(float(t[b]), lo), ATTEMPTS)
    picks = [a] + [int(np.clip(np.searchsorted(t, x), a, b)) for x in targets[1:]]
    return list(dict.fromkeys(picks))


def plateau_linearization(traj: Trajectory, events: list[Event] | None = None) -> list[PlateauEscape]:
    """The a-priori escape prediction of every plateau of `traj` against its observed escape (module
    docstring). The plateau a run ends on is predicted from the run's last state."""
    check_flow_trajectory(traj)
    events = detect_stages(traj) if events is None else events
    t = np.asarray(traj.times)
    plan = RunPlan.of(traj.record)
    out = []
    for p, e in enumerate(e for e in events if e.kind == "plateau"):
        a, b, final = e.details["start_index"], e.details["end_index"], e.details["final"]
        prediction = None
        for i in ([len(t) - 1] if final else _attempts(t, a, b)):
            prediction = predict_escape(traj, float(t[i]), plan=plan)
            if prediction.failure is None:
                break
        observed = math.nan if final else float(e.details["next_escape"])
        out.append(PlateauEscape(plateau=p, entry=float(t[a]), observed_escape=observed, prediction=prediction,
                                 final=final))
    return out


def linearization_table(rows: list[PlateauEscape]) -> str:
    """A Markdown table: per plateau, the saddle and its predicted against observed escape."""
    out = ["| plateau | entry | predicted from | saddle index | escape rate | predicted escape | linear only | "
           "observed escape | predicted/observed duration | predicted/observed time left | why no prediction |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        q = r.prediction
        observed = "— (run ends here)" if r.final else f"{r.observed_escape:.4g}"
        ratio = "—" if not math.isfinite(r.ratio) else f"{r.ratio:.3f}"
        left = "—" if not math.isfinite(r.remaining_ratio) else f"{r.remaining_ratio:.3f}"
        index = "—" if q.saddle_index < 0 else str(q.saddle_index)  # no critical point located
        out.append(f"| {r.plateau} | {r.entry:.4g} | {q.at:.4g} | {index} | {q.escape_rate:.3g} | "
                   f"{q.predicted_escape:.4g} | {q.linear_escape:.4g} | {observed} | {ratio} | {left} | "
                   f"{q.failure or ''} |")
    return "\n".join(out)
