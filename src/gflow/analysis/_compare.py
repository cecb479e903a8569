"""Discrete training against the continuous flow: distance, loss gap, event shifts, sharpness.

The flow is re-solved from its own record (same data, loss, solver and tolerances) with the discrete
run's saved times as its save grid, so both are compared at exactly the same flow times (no
interpolation error enters the distance).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from ..flow import run_record
from ..record import Trajectory
from ._events import Event
from ._hessian import hessian_vector_product, lanczos_extremes
from ._stages import detect_stages


@dataclasses.dataclass(frozen=True)
class Comparison:
    """`discrete` against `flow` at the discrete run's saved times (`times`, clipped to the flow's span).

    - `distance`: $\\|\\theta_{disc} - \\theta_{flow}\\| / \\|\\theta_{flow}\\|$.
    - `loss_gap`: $L(\\theta_{disc}) - L(\\theta_{flow})$.
    - `event_shifts`: per stage event found in both runs (matched by kind and order), the flow and
      discrete times and their ratio.
    - `sharpness_times`, `sharpness_flow`, `sharpness_discrete`: largest Hessian eigenvalue along
      both (Lanczos on Hessian-vector products); `eos_line` = 2/lr for plain GD/SGD, else `None`.
    - `flow_events`, `discrete_events`: the stage events of both runs (what `event_shifts` matches,
      and what the comparison figure draws).
    """

    times: np.ndarray
    distance: np.ndarray
    loss_gap: np.ndarray
    flow_loss: np.ndarray
    discrete_loss: np.ndarray
    event_shifts: list[dict]
    sharpness_times: np.ndarray
    sharpness_flow: np.ndarray
    sharpness_discrete: np.ndarray
    eos_line: float | None
    label: str
    flow_events: list[Event] = dataclasses.field(default_factory=list)
    discrete_events: list[Event] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        i = int(np.argmax(self.distance))
        return (f"{self.label}: max relative distance {self.distance[i]:.3g} at t = {self.times[i]:.3g}; final "
                f"distance {self.distance[-1]:.3g}, loss gap {self.loss_gap[-1]:+.3g}")


def _events_by_kind(events):
    out: dict[tuple[str, int], float] = {}
    counts: dict[str, int] = {}
    for e in events:
        k = counts.get(e.kind, 0)
        counts[e.kind] = k + 1
        out[(e.kind, k)] = e.time
    return out


def event_shift_table(shifts: list[dict]) -> str:
    rows = ["| event | # | flow time | discrete time | ratio |", "|---|---:|---:|---:|---:|"]
    rows += [f"| {s['kind']} | {s['occurrence']} | {s['flow_time']:.4g} | {s['discrete_time']:.4g} | "
             f"{s['ratio']:.3f} |" for s in shifts]
    return "\n".join(rows)


def sharpness(traj: Trajectory, indices, steps: int = 30) -> np.ndarray:
    """Largest Hessian eigenvalue of the trajectory's own loss at the given saved indices (Lanczos)."""
    layout, fn, ys = traj.layout, traj.loss_function(), traj.flat_params()
    out = []
    for i in indices:
        y = jnp.asarray(ys[int(i)])
        vals, _ = lanczos_extremes(lambda v, y=y: hessian_vector_product(fn, layout, y, v), layout.size, steps,
                                   jax.random.key(0))
        out.append(vals[-1])
    return np.asarray(out)


def compare(flow: Trajectory, discrete: Trajectory, *, n_sharpness: int = 12, label: str | None = None,
            progress: bool | None = False, flow_events: list[Event] | None = None) -> Comparison:
    """Compare `discrete` (from `gflow.train`) with `flow` (from `gflow.simulate`): same data, model,
    loss and initial parameters. `flow_events`: the flow's `detect_stages`, when already computed
    (detecting them refines every event by re-solving the flow, which costs as much again as the flow
    on expensive losses); by default they are detected here."""
    for name, traj, kinds in (("flow", flow, ("flow", "ensemble")), ("discrete", discrete, ("discrete",))):
        if not isinstance(traj, Trajectory) or traj.record.kind not in kinds:
            got = traj.record.kind if isinstance(traj, Trajectory) else type(traj).__name__
            raise ValueError(f"`{name}` must be a trajectory from gflow.{'simulate' if name == 'flow' else 'train'}; "
                             f"got a {got} run.")
    if not flow.record.same_problem(discrete.record):
        raise ValueError("`flow` and `discrete` must share the data source, the config and the loss (method, samples, "
                         f"dataset); got losses {flow.record.loss.method!r} and {discrete.record.loss.method!r}.")
    if not np.array_equal(flow.flat_params()[0], discrete.flat_params()[0]):
        raise ValueError("`flow` and `discrete` must start from the same parameters.")
    t_end = float(flow.times[-1])
    keep = discrete.times <= t_end * (1 + 1e-12)
    times = np.asarray(discrete.times[keep])
    if len(times) < 2:  # only the shared start: nothing to compare
        first = float(discrete.times[1]) if len(discrete) > 1 else math.nan
        raise ValueError(f"`discrete` has no saved step within the flow's time span (its first saved step after "
                         f"the start is at t = lr * step = {first:.4g}, "
                         f"the flow ends at t = {t_end:.4g}): run the flow longer, or train with a smaller lr or "
                         "save more often.")
    ref = run_record(flow.record.with_save_times(times), flow.params_at(0), progress=progress)
    n = min(len(ref), int(keep.sum()))
    yf, yd = ref.flat_params()[:n], discrete.flat_params()[:n]
    distance = np.linalg.norm(yd - yf, axis=1) / np.maximum(np.linalg.norm(yf, axis=1), np.finfo(float).tiny)
    flow_events = detect_stages(flow) if flow_events is None else flow_events
    discrete_events = detect_stages(discrete)
    ev_f, ev_d = _events_by_kind(flow_events), _events_by_kind(discrete_events)
    shifts = [{"kind": k, "occurrence": i, "flow_time": ev_f[(k, i)], "discrete_time": ev_d[(k, i)],
               "ratio": ev_d[(k, i)] / ev_f[(k, i)] if ev_f[(k, i)] > 0 else float("nan")}
              for (k, i) in ev_f if (k, i) in ev_d and k != "plateau"]
    idx = np.unique(np.linspace(1, n - 1, min(n_sharpness, n - 1)).astype(int))
    s_flow, s_disc = sharpness(ref, idx), sharpness(discrete, idx)
    training = discrete.record.training
    eos = 2.0 / training.lr if training.optimizer in ("gd", "sgd") else None
    return Comparison(times=times[:n], distance=distance, loss_gap=np.asarray(discrete.loss[:n] - ref.loss[:n]),
                      flow_loss=np.asarray(ref.loss[:n]), discrete_loss=np.asarray(discrete.loss[:n]),
                      event_shifts=shifts, sharpness_times=times[idx], sharpness_flow=s_flow,
                      sharpness_discrete=s_disc, eos_line=eos, flow_events=flow_events,
                      discrete_events=discrete_events,
                      label=label or f"{training.optimizer} lr={training.lr:g}"
                      + (f" B={training.batch_size}" if training.batch_size else ""))
