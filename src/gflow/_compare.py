"""Discrete training against the continuous flow: distance, loss gap, event shifts, sharpness.

The flow is re-solved with the discrete run's saved times as its save grid, so both are compared at
exactly the same flow times (no interpolation error enters the distance).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from ._flow import simulate
from ._layout import ParamLayout
from ._loss import loss_function
from ._trajectory import Trajectory
from .analysis import detect_stages
from .analysis._linearize import hessian_vector_product, lanczos_extremes


@dataclasses.dataclass(frozen=True)
class Comparison:
    """`discrete` against `flow` at the discrete run's saved times (`times`, clipped to the flow's span).

    - `distance`: $\\|\\theta_{disc} - \\theta_{flow}\\| / \\|\\theta_{flow}\\|$.
    - `loss_gap`: $L(\\theta_{disc}) - L(\\theta_{flow})$.
    - `event_shifts`: per stage event found in both runs (matched by kind and order), the flow and
      discrete times and their ratio.
    - `sharpness_times`, `sharpness_flow`, `sharpness_discrete`: largest Hessian eigenvalue along
      both (Lanczos on Hessian-vector products); `eos_line` = 2/lr for plain GD/SGD, else `None`.
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
    """Largest Hessian eigenvalue of the trajectory's loss at the given saved indices (Lanczos)."""
    layout = ParamLayout.of(traj.config, traj.spec)
    fn = loss_function(traj.spec, traj.config, traj.settings.get("loss", "auto"))
    out = []
    for i in indices:
        y = layout.flatten(traj.params_at(int(i)))
        vals, _ = lanczos_extremes(lambda v, y=y: hessian_vector_product(fn, layout, y, v), layout.size, steps,
                                   jax.random.key(0))
        out.append(vals[-1])
    return np.asarray(out)


def compare(flow: Trajectory, discrete: Trajectory, *, n_sharpness: int = 12, label: str | None = None,
            progress: bool | None = False) -> Comparison:
    """Compare `discrete` (from `gflow.train`) with `flow` (from `gflow.simulate`, same chain and config)."""
    if flow.config != discrete.config or flow.spec.T != discrete.spec.T or not np.array_equal(
            np.asarray(flow.spec.P), np.asarray(discrete.spec.P)):
        raise ValueError("`flow` and `discrete` must share the chain and the config.")
    layout = ParamLayout.of(flow.config, flow.spec)
    if not np.array_equal(layout.flatten(flow.params_at(0)), layout.flatten(discrete.params_at(0))):
        raise ValueError("`flow` and `discrete` must start from the same parameters.")
    t_end = float(flow.times[-1])
    keep = discrete.times <= t_end * (1 + 1e-12)
    times = np.asarray(discrete.times[keep])
    s = flow.settings
    ref = simulate(flow.params_at(0), flow.spec, (0.0, float(times[-1])), config=flow.config, loss=s["loss"],
                   solver=s["solver"], rtol=s["rtol"], atol=s["atol"], save_times=times, max_steps=s["max_steps"],
                   progress=progress)
    n = min(len(ref), int(keep.sum()))
    yf = np.asarray(jax.vmap(layout.flatten)(ref.params))[:n]
    yd = np.asarray(jax.vmap(layout.flatten)(discrete.params))[:n]
    distance = np.linalg.norm(yd - yf, axis=1) / np.maximum(np.linalg.norm(yf, axis=1), np.finfo(float).tiny)
    ev_f, ev_d = _events_by_kind(detect_stages(flow)), _events_by_kind(detect_stages(discrete))
    shifts = [{"kind": k, "occurrence": i, "flow_time": ev_f[(k, i)], "discrete_time": ev_d[(k, i)],
               "ratio": ev_d[(k, i)] / ev_f[(k, i)] if ev_f[(k, i)] > 0 else float("nan")}
              for (k, i) in ev_f if (k, i) in ev_d and k != "plateau"]
    idx = np.unique(np.linspace(1, n - 1, min(n_sharpness, n - 1)).astype(int))
    s_flow, s_disc = sharpness(ref, idx), sharpness(discrete, idx)
    opt = discrete.settings.get("optimizer")
    eos = 2.0 / discrete.settings["lr"] if opt in ("gd", "sgd") else None
    return Comparison(times=times[:n], distance=distance, loss_gap=np.asarray(discrete.loss[:n] - ref.loss[:n]),
                      flow_loss=np.asarray(ref.loss[:n]), discrete_loss=np.asarray(discrete.loss[:n]),
                      event_shifts=shifts, sharpness_times=times[idx], sharpness_flow=s_flow,
                      sharpness_discrete=s_disc, eos_line=eos,
                      label=label or f"{opt} lr={discrete.settings['lr']:g}"
                      + (f" B={discrete.settings['batch_size']}" if discrete.settings.get("batch_size") else ""))
