"""Event times from the solution between saved points, not from the save grid.

A stage event is a crossing or an extremum of a metric (the loss, a singular value, the focus index)
between two saved points. For a flow, the run is re-solved from the earlier saved state over that
interval with `chunk_size + 1` save points (its record's solver and tolerances; the same compiled
solve, so no recompilation), the metric is evaluated there, and the search narrows to the bracketing
sub-interval, until the bracket is below a millionth of the time (`PRECISION`). The event carries
the bracket's half-width as its uncertainty.

Discrete runs whose step depends on the parameters alone (full-batch `gd`/`sgd`: no optimiser state,
no minibatch draws) are re-run the same way, from the saved parameters of the earlier point, with
the run's own optimiser, learning rate and loss, until the bracket is one step: their events are
timed as finely as the flow's. Other discrete runs (momentum, Adam, minibatches) cannot be re-run
from a saved point (their optimiser state or random draws are not saved): their events are
interpolated on the saved points, with half an interval of uncertainty.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from ..flow import RunPlan, run_record, train
from ..record import Trajectory
from ._signals import interpolate_crossing

MAX_ROUNDS = 8
PRECISION = 1e-6
"""Narrow the bracket until it is this small relative to the time (or `MAX_ROUNDS` re-solves)."""

RERUN_POINTS = 65
"""Saved points of a discrete re-run (log-spaced steps): each round narrows the bracket by about
this factor, so a few rounds reach one step."""

Signal = Callable[[object], np.ndarray]
"""Maps `Metrics` of a stretch of trajectory to the signal's values there."""


def rerunnable(traj: Trajectory) -> bool:
    """Whether a discrete run's steps depend on the parameters alone (full-batch plain `gd`/`sgd`)."""
    training = traj.record.training
    return (traj.record.kind == "discrete" and training is not None and training.batch_size is None
            and training.optimizer in ("gd", "sgd"))


class Refiner:
    """Locates crossings and extrema of metric signals between saved points of a trajectory."""

    def __init__(self, traj: Trajectory | None, metrics_of: Callable[[Trajectory], object]):
        self.traj = traj
        self.metrics_of = metrics_of
        self.can_resolve = traj is not None and len(traj) > 1 and (
            traj.record.kind in ("flow", "ensemble") or rerunnable(traj))
        self._plan = None  # the run's plan, made at the first re-solve and kept for the others

    def _stretch(self, t0: float, y0: np.ndarray, t1: float, method: str | None = None):
        """Metrics on a fine grid from (t0, y0) to t1, re-solved with the run's own record (and, for
        the switching default, the method the run used there: on a stiff stretch, starting with the
        explicit method cost the demo 5,000 discarded steps per re-solve)."""
        record = self.traj.record
        if record.kind == "discrete":
            return self._steps(t0, y0, t1)
        n = record.solver.chunk_size + 1
        times = np.geomspace(t0, t1, n) if t0 > 0 else np.linspace(t0, t1, n)
        times[0], times[-1] = t0, t1
        params0 = record.layout.unflatten(np.asarray(y0, dtype=np.float64))
        if self._plan is None:
            self._plan = RunPlan.of(record)
        sub = run_record(record.with_save_times(times), params0, plan=self._plan, progress=False, method=method)
        if not sub.ok or len(sub) != n:
            return None
        return sub, self.metrics_of(sub)

    def _steps(self, t0: float, y0: np.ndarray, t1: float):
        """The discrete run re-run from (t0, y0) to t1, saved at up to `RERUN_POINTS` log-spaced steps."""
        record = self.traj.record
        training = record.training
        dt = training.time_per_step
        steps = int(round((t1 - t0) / dt))
        if steps < 2:
            return None
        params0 = record.layout.unflatten(np.asarray(y0, dtype=np.float64))
        sub = train(params0, record.source, record.config, optimizer=training.optimizer, lr=training.lr, steps=steps,
                    loss=record.loss, n_save=min(steps + 1, RERUN_POINTS), progress=False)
        if not sub.ok:
            return None
        sub = dataclasses.replace(sub, times=t0 + sub.times)
        return sub, self.metrics_of(sub)

    def _narrow(self, lo: float, hi: float, i: int, locate) -> tuple[float, float]:
        """Re-solve [lo, hi] from the state saved at index `i` and let `locate(times, values_of_metrics)`
        pick the sub-bracket `(j_lo, j_hi)` to keep (or `None` to stop), until the bracket is small."""
        one_step = self.traj.record.training.time_per_step if self.traj.record.kind == "discrete" else 0.0
        y, method = self.traj.flat_params()[i], self.traj.method_at(i)
        for _ in range(MAX_ROUNDS):
            if hi - lo <= max(PRECISION * hi, one_step * (1 + 1e-9)):
                break
            got = self._stretch(lo, y, hi, method)
            if got is None:
                break
            sub, m = got
            picked = locate(sub.times, m)
            if picked is None:
                break
            a, b = picked
            lo, hi, y, method = sub.times[a], sub.times[b], sub.flat_params()[a], sub.method_at(a)
        return lo, hi

    def crossing(self, times: np.ndarray, values: np.ndarray, i: int, level: float, signal: Signal,
                 level_uncertainty: float = 0.0) -> tuple[float, float]:
        """The time in (times[i-1], times[i]] where the signal crosses `level`, and its uncertainty: the
        final bracket's half-width plus what `level_uncertainty` moves the crossing by."""
        found = {"estimate": interpolate_crossing(times, values, level, i),
                 "slope": abs(values[i] - values[i - 1]) / max(times[i] - times[i - 1], 1e-300)}

        def locate(t, m):
            x = signal(m)
            j = next((k for k in range(1, len(x)) if (x[k] > level) != (x[0] > level)), None)
            if j is not None:
                found["estimate"] = interpolate_crossing(t, x, level, j)
                found["slope"] = abs(x[j] - x[j - 1]) / max(t[j] - t[j - 1], 1e-300)
                return j - 1, j
            return None

        lo, hi = times[i - 1], times[i]
        if self.can_resolve:
            lo, hi = self._narrow(lo, hi, i - 1, locate)
        return found["estimate"], 0.5 * (hi - lo) + level_uncertainty / max(found["slope"], 1e-300)

    def maximum(self, times: np.ndarray, values: np.ndarray, i: int, signal: Signal) -> tuple[float, float]:
        """The time of the signal's maximum near saved index `i` (in [times[i-1], times[i+1]])."""
        lo_i, hi_i = max(i - 1, 0), min(i + 1, len(times) - 1)
        found = {"best": float(times[i])}

        def locate(t, m):
            j = int(np.argmax(signal(m)))
            found["best"] = float(t[j])
            return max(j - 1, 0), min(j + 1, len(t) - 1)

        lo, hi = times[lo_i], times[hi_i]
        if self.can_resolve and lo_i != hi_i:
            lo, hi = self._narrow(lo, hi, lo_i, locate)
        return found["best"], 0.5 * (hi - lo)
