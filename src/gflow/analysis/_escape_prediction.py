"""A-priori escape times: from one state on a plateau, when will the flow leave it?

Nothing after the present is used. From the state $\\theta(t_0)$:

1. **The saddle** $\\theta^*$: Newton on $\\nabla L = 0$ from $\\theta(t_0)$ (`locate_critical_point`).
   It is the plateau's saddle only if the linearisation there explains the present gradient,
   $\\|\\nabla L(\\theta) - H^*(\\theta - \\theta^*)\\| \\le$ `CONSISTENT` $\\|\\nabla L(\\theta)\\|$: otherwise the
   state is not in the saddle's linear neighbourhood (a degenerate critical point, a slow valley)
   and no linear prediction is made; the reason is returned.
2. **The unstable components**: $c_k = v_k^\\top(\\theta(t_0) - \\theta^*)$ for each eigenvalue
   $\\lambda_k = -\\sigma_k < 0$ of $H^*$ (eigenvalues closer than $1/\\tau$ share one direction: the
   projection on their span). Linearised, $c_k(t) = c_k e^{\\sigma_k (t - t_0)}$.
3. **The escape**: the flow from $\\theta^* + \\sum_k c_k \\hat v_k$ (the saddle plus the present
   unstable components, every other deviation dropped) follows the saddle's unstable manifold; it
   is solved with the run's own solver and tolerances and its escape is timed as the run's are,
   half-way down its first drop (`detect_stages`). That time is the prediction: the exponential
   growth and the nonlinear exit both come from the model, and the exit threshold from the
   manifold's own loss, never from the run's future. (All unstable components ride together: with
   the fastest alone, a slower direction's drop that the run merges with the fastest one's is
   missing, and the orbit pauses where the run does not: 25% early on a finite-T chain.)
4. **The linearisation alone** (`linear_escape`): $t_0 + \\ln(c^{exit}/|c|)/\\sigma$, with $c^{exit}$ the
   unstable component where the manifold's escape happens. Where it differs from step 3 the
   nonlinearity shortens or lengthens the exit (on the sticky chains the attention stage's exit is
   about 15% faster than exponential growth).

Which directions count (steps 1-2) depends on the escape time $\\tau$: a direction whose curvature is
below $1/\\tau$ moves by less than a factor $e$ before the escape, so Newton leaves it where it is
(inverting its tiny curvature would send the step far along a nearly flat valley), and unstable
eigenvalues closer than $1/\\tau$ grow together. $\\tau$ is estimated without solving anything
(`_rough_duration`), to a fixed point.

A prediction fails, with the reason, where the picture does not hold: no negative curvature at the
state, Newton finds no critical point, the state is outside the saddle's linear neighbourhood
(`CONSISTENT`), or no unstable direction leads the loss down.

Scale-free: every threshold is a ratio of the run's own quantities (gradients, curvatures, the
manifold's own loss drop), so the rule does not depend on the initial scale, the vocabulary or the loss.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from jaxtyping import Float

from ..common import is_real
from ..flow import RunPlan, run_record
from ..record import Trajectory
from ._hessian import DENSE_LIMIT, dense_hessian
from ._saddle import CriticalPoint, _value_and_grad, locate_critical_point
from ._signals import ROUNDOFF, crossing, interpolate_crossing
from ._stages import episodes, resolved_loss_change

CONSISTENT = 0.1
"""The linearisation at the located critical point must explain the present gradient to this
fraction: the nonlinear remainder at most a tenth of the gradient, so that the growth rates the
prediction rests on are right to about 10% (a prediction is asked to be right to 15%)."""

ORBIT_POINTS = 400
MIN_ORBIT_POINTS = 24
"""The orbit is saved on the run's own grid after the present (drops are then told apart as the
run's are); where that grid is too coarse (under `MIN_ORBIT_POINTS` points to the horizon), on
`ORBIT_POINTS` log-spaced ones."""

ORBIT_HORIZON = 4.0
"""The orbit is first solved to this many times the linear estimate ln(|theta*| / c) / sigma (at
least 1/sigma), then four times longer while its drop is not complete."""


@dataclasses.dataclass(frozen=True, eq=False)
class EscapePrediction:
    """What the linearisation at the nearest saddle predicts from the state at time `at`.

    - `predicted_escape`: the time (nan with `failure` set when no linear prediction holds);
    - `linear_escape`: the same from the exponential growth alone;
    - `saddle_loss`, `saddle_index` (the negative eigenvalues among the directions the search
      resolves, `CriticalPoint.solved`: those faster than the escape's own rate; below it a
      direction is flat on the plateau's time scale, as the 49 values between -2e-7 and -4e-9 that
      a threshold of 1e-8 of the largest eigenvalue counted beside a saddle's 12 at -0.41; -1 where
      no critical point was located or searched for), `escape_rate` ($\\sigma$ of the escaping direction),
      `lambda_max`, `component` (its $|c|$ now), `exit_scale`, `saddle_distance`
      ($\\|\\theta(at) - \\theta^*\\|$), `consistency` (the relative residual of step 1);
    - `failure`: why no prediction is made, else `None`.
    """

    at: float
    predicted_escape: float
    linear_escape: float
    saddle_loss: float
    saddle_index: int
    escape_rate: float
    lambda_min: float
    lambda_max: float
    component: float
    exit_scale: float
    saddle_distance: float
    consistency: float
    spectrum: np.ndarray
    failure: str | None = None

    @property
    def duration(self) -> float:
        return self.predicted_escape - self.at


def _unstable_directions(cp: CriticalPoint, delta: np.ndarray) -> list[tuple[float, np.ndarray, float]]:
    """(sigma, unit direction, |component|) per unstable eigenspace, the component's sign folded in.
    Eigenvalues closer than the slow rate $1/\\tau$ are one eigenspace: over the escape time their
    components grow by the same factor to within $e$, so the state leaves along their combination."""
    vals, vecs = cp.eigenvalues, cp.eigenvectors
    solved = cp.solved()
    unstable = [k for k in range(len(vals)) if vals[k] < 0 and solved[k]]
    out, k = [], 0
    while k < len(unstable):
        group = [unstable[k]]
        while k + len(group) < len(unstable) and \
                abs(vals[unstable[k + len(group)]] - vals[group[0]]) <= cp.slowest_rate:
            group.append(unstable[k + len(group)])
        k += len(group)
        proj = vecs[:, group] @ (vecs[:, group].T @ delta)
        size = float(np.linalg.norm(proj))
        if size > 0:
            out.append((float(-np.mean(vals[group])), proj / size, size))
    return out


def _rough_duration(cp: CriticalPoint, sigma: float, c0: float) -> float:
    """The linear time for a component c0 to grow to the size of the saddle's parameters (at least
    1): ln(max(|theta*|, 1) / c0) / sigma, at least 1 / sigma. Sets the orbit's horizon and the slow rate."""
    return max(1.0, math.log(max(float(np.linalg.norm(cp.y)), 1.0) / c0)) / sigma


def _orbit_times(saved: np.ndarray, at: float, end: float) -> np.ndarray:
    """The orbit's save grid: the run's own save times after `at` (so that its drops are told apart
    exactly as the run's are), continued past the run's end with the grid's last ratio, up to `end`;
    a log grid of `ORBIT_POINTS` where the run's grid holds fewer than `MIN_ORBIT_POINTS` there."""
    later = saved[(saved > at) & (saved <= end)]
    if len(saved) >= 2 and saved[-1] > 0 and saved[-2] > 0 and saved[-1] < end:
        ratio = max(saved[-1] / saved[-2], 1.0 + 1e-3)
        extra = saved[-1] * ratio ** np.arange(1, int(np.ceil(np.log(end / saved[-1]) / np.log(ratio))) + 1)
        later = np.concatenate([later, extra])
    if len(later) < MIN_ORBIT_POINTS:
        later = at + np.geomspace(1e-3 * (end - at), end - at, ORBIT_POINTS)
    return np.concatenate([[at], later])


def _orbit_escape(traj: Trajectory, plan, cp: CriticalPoint, displacement: np.ndarray, v: np.ndarray,
                  sigma: float, c0: float, at: float) -> tuple[float, float]:
    """(escape time, exit scale along `v`) of the flow from the saddle displaced by the state's
    unstable components alone (`displacement`): the unstable manifold, solved with the run's own
    solver and tolerances, its escape timed half-way down its first drop as `detect_stages` times
    the run's; (nan, nan) when it shows no drop."""
    record = traj.record
    horizon = ORBIT_HORIZON * _rough_duration(cp, sigma, c0)
    y0 = cp.y + displacement
    for _ in range(3):  # lengthen the horizon until the drop is complete
        times = _orbit_times(np.asarray(traj.times), at, at + horizon)
        orbit = run_record(record.with_save_times(times), record.layout.unflatten(y0), plan=plan, progress=False)
        L = np.asarray(orbit.loss)
        if len(L) == len(times):
            floor = max(ROUNDOFF * float(np.abs(L).max()), resolved_loss_change(traj, L))  # as the run's drops
            drops = [e for e in episodes(times, -L) if e.confirmed and e.change > floor and e.after < len(times) - 1]
            if drops:
                e = drops[0]
                level = e.level(L)
                k = crossing(times, L, level, e.before, e.after)
                time = interpolate_crossing(times, L, level, k, log_time=False)
                ys = orbit.flat_params()
                c_exit = float(np.interp(time, times, ys @ v - cp.y @ v))
                return time, abs(c_exit)
        horizon *= 4
    return math.nan, math.nan


def _unexplained(cp: CriticalPoint, y: np.ndarray, g: np.ndarray) -> float:
    """The part of the gradient at `y` that the linearisation at `cp` leaves unexplained, relative."""
    delta = y - cp.y
    model = cp.gradient + cp.eigenvectors @ (cp.eigenvalues * (cp.eigenvectors.T @ delta))
    return float(np.linalg.norm(g - model) / max(np.linalg.norm(g), np.finfo(float).tiny))


def _escape_from(traj: Trajectory, plan, cp: CriticalPoint, y: np.ndarray, at: float):
    """(tau, linear tau, sigma, |c|, c_exit) of the orbit carrying every unstable component of the
    state (the fastest direction's numbers), or None when there is none or the orbit shows no drop.
    All components ride together: a slower direction that has grown by the time the fastest one
    saturates merges its drop with it in the run, and must in the orbit too."""
    directions = _unstable_directions(cp, y - cp.y)
    if not directions:
        return None
    sigma, v, c0 = max(directions, key=lambda d: d[0])
    displacement = sum(c * u for _, u, c in directions)
    time, c_exit = _orbit_escape(traj, plan, cp, displacement, v, sigma, c0, at)
    if not math.isfinite(time):
        return None
    return time - at, math.log(max(c_exit, c0) / c0) / sigma, sigma, c0, c_exit


PASSES = 4
"""At most this many fixed-point passes of the slow-direction rate (they settle in two or three)."""


def _predict(traj: Trajectory, y: Float[np.ndarray, " n"], at: float, plan: RunPlan | None) -> EscapePrediction:
    """The a-priori escape time from the flat state `y` at time `at` (module docstring). The slow
    rate starts at half the state's fastest growth (that direction must be solved for) and follows
    $1/\\tau$ of the rough estimate until it settles to 10%."""
    fn, layout = traj.loss_function(), traj.layout
    y = np.asarray(y, dtype=np.float64)
    nan = dict(predicted_escape=math.nan, linear_escape=math.nan, escape_rate=math.nan, component=math.nan,
               exit_scale=math.nan)
    empty = dict(at=float(at), saddle_loss=math.nan, saddle_index=-1, lambda_min=math.nan, lambda_max=math.nan,
                 saddle_distance=math.nan, consistency=math.nan, spectrum=np.zeros(0))
    if layout.size > DENSE_LIMIT:
        return EscapePrediction(**empty, **nan, failure=f"the model has {layout.size} parameters; locating a saddle "
                                f"factors the Hessian, which is done up to {DENSE_LIMIT}")
    if not np.all(np.isfinite(y)):
        return EscapePrediction(**empty, **nan, failure="the state is not finite (the run diverged)")
    plan = RunPlan.of(traj.record) if plan is None else plan
    loss, g = (np.asarray(v) for v in _value_and_grad(fn, layout, y))  # the saddle search's own program
    if not (np.isfinite(loss) and np.all(np.isfinite(g))):
        return EscapePrediction(**empty, **nan, failure="the loss or its gradient is not finite at the state")
    vals = np.linalg.eigvalsh(np.asarray(dense_hessian(fn, layout, y)))
    if vals[0] >= -1e-8 * max(abs(vals).max(), np.finfo(float).tiny):
        return EscapePrediction(**(empty | dict(saddle_index=0, lambda_min=float(vals[0]), lambda_max=float(vals[-1]),
                                                spectrum=vals)),
                                **nan, failure="no negative curvature at the state: nothing grows "
                                "exponentially (a minimum's basin or a degenerate critical point)")
    sigma_state = -float(vals[0])
    rate = 0.5 * sigma_state
    cp = None
    for _ in range(PASSES):  # the slow rate's fixed point, on the cheap estimate of tau (no orbits)
        same = None if cp is None else cp.at_slowest_rate(rate)  # often the new rate changes no step
        cp = same or locate_critical_point(fn, layout, y, slowest_rate=rate)
        directions = _unstable_directions(cp, y - cp.y) if cp.converged else []
        if not directions:
            break
        tau = min(_rough_duration(cp, sigma, c0) for sigma, _, c0 in directions)
        new_rate = min(1.0 / tau, 0.5 * max(sigma for sigma, _, _ in directions))
        if abs(new_rate - rate) <= 0.1 * rate:
            break
        rate = new_rate
    unexplained = _unexplained(cp, y, g) if np.linalg.norm(y - cp.y) > 0 else 0.0
    index = int(((cp.eigenvalues < 0) & cp.solved()).sum()) if cp.converged else -1
    base = dict(at=float(at), saddle_loss=cp.loss, saddle_index=index,
                lambda_min=float(cp.eigenvalues[0]), lambda_max=float(cp.eigenvalues[-1]),
                saddle_distance=float(np.linalg.norm(y - cp.y)), consistency=unexplained, spectrum=cp.eigenvalues)
    if not cp.converged:
        return EscapePrediction(**base, **nan, failure=f"Newton found no critical point near the state (the solved "
                                f"gradient fell only from {cp.start_gradient_norm:.2g} to {cp.gradient_norm:.2g})")
    if unexplained > CONSISTENT:
        return EscapePrediction(**base, **nan, failure=f"the state is outside the linear neighbourhood of the nearest "
                                f"critical point (its Hessian leaves {unexplained:.0%} of the gradient unexplained)")
    best = _escape_from(traj, plan, cp, y, float(at))  # the orbit: only for a state that passed the tests
    if best is None:
        return EscapePrediction(**base, **nan, failure="the loss does not fall along any unstable direction of the "
                                "nearest critical point")
    tau, linear, sigma, c0, c_exit = best
    return EscapePrediction(**base, predicted_escape=float(at) + tau, linear_escape=float(at) + linear,
                            escape_rate=sigma, component=c0, exit_scale=c_exit)


def check_flow_trajectory(traj) -> None:
    """A prediction solves the flow from the saddle with the run's own solver: `traj` must be a flow."""
    if not isinstance(traj, Trajectory):
        raise ValueError(f"`traj` must be a Trajectory of a flow (gflow.simulate); got {type(traj).__name__}.")
    if traj.record.solver is None:
        raise ValueError("`traj` is a discrete run (gflow.train): an escape prediction solves the gradient flow from "
                         "the saddle with the run's solver; predict on the flow from the same start (gflow.simulate).")


def predict_escape(traj: Trajectory, at: float | None = None, *, plan: RunPlan | None = None) -> EscapePrediction:
    """The a-priori escape time from the state `traj` saved at time `at` (default: its last state, the
    present of a run that may have been cut off on a plateau). Only that state is used. `plan`: the
    run's `RunPlan`, when the caller predicts many times (it is built from the record otherwise)."""
    check_flow_trajectory(traj)
    t = np.asarray(traj.times)
    if at is None:
        i = len(t) - 1
    else:
        if not (is_real(at) and math.isfinite(float(at)) and t[0] <= float(at) <= t[-1]):
            raise ValueError(f"`at` must be a time of the run, in [{t[0]:g}, {t[-1]:g}]; got {at!r}.")
        i = int(np.searchsorted(t, float(at) * (1 + 1e-12), side="right")) - 1  # the last state saved by `at`
    return _predict(traj, np.asarray(traj.layout.flatten(traj.params_at(i))), float(t[i]), plan)  # one state, not all
