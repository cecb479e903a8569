"""Gradient flow $\\dot\\theta = -\\nabla L(\\theta)$ of the population loss, integrated by diffrax.

The save grid is integrated in chunks. Each chunk is one call of a single compiled function (one
`diffeqsolve` from the chunk's first save time to its last), so the step loop never leaves XLA;
between chunks Python updates the progress bar, writes the checkpoint, and notices Ctrl-C. Every
chunk starts its step-size controller afresh: a run resumed from a checkpoint therefore repeats an
uninterrupted run bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ._bdf import GradientFlowBDF
from ._layout import ParamLayout
from ._loss import LossFunction, loss_function
from ._markov import MarkovSpec
from ._model import TransformerConfig, TransformerParams, check_params
from ._rosenbrock import GradientFlowRosenbrock
from ._solvers import default_solver, make_solver, solver_name
from ._trajectory import Trajectory, load

DEFAULT_RTOL = 1e-6
DEFAULT_ATOL = 1e-9
DEFAULT_N_SAVE = 121
DEFAULT_DECADES = 6
DEFAULT_CHUNKS = 10


class GradientField(eqx.Module):
    """The vector field $-\\nabla L$ on the flat parameter vector."""

    loss: LossFunction
    layout: ParamLayout

    def value(self, y: Float[Array, " n"]):
        return self.loss(self.layout.unflatten(y))

    def __call__(self, t, y: Float[Array, " n"], args) -> Float[Array, " n"]:
        return -jax.grad(self.value)(y)


def default_save_times(t_span: tuple[float | int, float | int], n_save: int = DEFAULT_N_SAVE,
                       decades: float = DEFAULT_DECADES) -> np.ndarray:
    """`t0` followed by `n_save - 1` log-spaced times ending at `t1`.

    Small-initialisation dynamics span decades, so the grid is logarithmic: from `t0` when it is
    positive, else from `t1 * 10**-decades`.
    """
    t0, t1 = t_span
    start = t0 if t0 > 0 else t1 * 10.0 ** (-decades)
    grid = np.logspace(math.log10(start), math.log10(t1), n_save - 1 if t0 == 0 else n_save)
    grid[-1] = t1
    return np.concatenate([[t0], grid]) if t0 == 0 else grid


def _check_t_span(t_span) -> tuple[float, float]:
    try:
        t0, t1 = (float(t) for t in t_span)
    except (TypeError, ValueError):
        raise ValueError(f"`t_span` must be a pair (t0, t1) of numbers; got {t_span!r}.") from None
    if not (math.isfinite(t0) and math.isfinite(t1)) or t0 < 0 or t1 <= t0:
        raise ValueError(f"`t_span` must satisfy 0 <= t0 < t1 < inf; got {t_span!r}.")
    return t0, t1


def _check_save_times(save_times, t0: float, t1: float) -> np.ndarray:
    ts = np.asarray(save_times, dtype=np.float64)
    if ts.ndim != 1 or ts.size < 1 or not np.all(np.isfinite(ts)):
        raise ValueError("`save_times` must be a 1-d array of finite times.")
    if np.any(np.diff(ts) <= 0):
        raise ValueError("`save_times` must be strictly increasing.")
    if ts[0] < t0 or ts[-1] > t1:
        raise ValueError(f"`save_times` must lie inside t_span = ({t0}, {t1}); got [{ts[0]}, {ts[-1]}].")
    return ts if ts[0] == t0 else np.concatenate([[t0], ts])


def _check_positive(name: str, value, integer: bool = False):
    ok = isinstance(value, (int, np.integer)) if integer else isinstance(value, (int, float, np.floating))
    if isinstance(value, bool) or not ok or not math.isfinite(value) or value <= 0:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"`{name}` must be {kind} > 0; got {value!r}.")
    return value


_COUNTED_BY_SOLVER = ("num_hessian_evaluations", "num_gradient_evaluations")


def _segment(field: GradientField, solver, controller, y0, t0, t1, ts, max_steps: int):
    """One diffeqsolve from `t0` to `t1` saving at `ts`, plus loss and gradient norm there."""
    keeps_hessians = isinstance(solver, (GradientFlowRosenbrock, GradientFlowBDF))
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field), solver, t0, t1, None, y0, saveat=diffrax.SaveAt(ts=ts, solver_state=keeps_hessians),
        stepsize_controller=controller, max_steps=max_steps, throw=False,
    )
    loss, grad = jax.vmap(jax.value_and_grad(field.value))(sol.ys)
    stats = {"num_accepted_steps": sol.stats["num_accepted_steps"],
             "num_rejected_steps": sol.stats["num_rejected_steps"]}
    if keeps_hessians:
        stats[_COUNTED_BY_SOLVER[0]] = sol.solver_state.hessians
    if isinstance(solver, GradientFlowBDF):
        stats[_COUNTED_BY_SOLVER[1]] = sol.solver_state.gradients
    ok = sol.result == diffrax.RESULTS.successful
    hit_max = sol.result == diffrax.RESULTS.max_steps_reached
    return sol.ts, sol.ys, loss, jnp.linalg.norm(grad, axis=-1), ok, hit_max, stats


# One compiled solve per chunk; the ensemble version maps it over a batch of initial states.
_integrate_segment = eqx.filter_jit(_segment)


def evaluation_counts(solver, attempted_steps: int) -> dict:
    """Work counts derived from the step counts, as diffrax reports no evaluation counts.

    `GradientFlowBDF` counts its Hessians and its gradients (one per Newton iteration) itself, and
    `GradientFlowRosenbrock` its Hessians: `_segment` reads them from the solver state. Rosenbrock
    steps take four gradients each (a retaken step, rare, takes four more). diffrax's implicit
    (ESDIRK) methods assemble one Jacobian (here the Hessian, by forward-over-reverse
    differentiation) per attempted step: that count is exact. Gradient evaluations are estimated as
    (stages - 1 if first-same-as-last, else stages) per attempted step; for implicit methods each stage
    also costs its Newton iterations, which diffrax does not report, so no gradient count is given.
    """
    if isinstance(solver, GradientFlowRosenbrock):
        return {"stages_per_step": 4, "num_gradient_evaluations_estimate": 4 * int(attempted_steps)}
    tableau = getattr(solver, "tableau", None)
    if tableau is None:
        return {}
    stages = int(tableau.num_stages)
    out = {"stages_per_step": stages}
    if isinstance(solver, diffrax.AbstractImplicitSolver):
        out["num_hessian_evaluations"] = int(attempted_steps)
    else:
        out["num_gradient_evaluations_estimate"] = int(attempted_steps) * (stages - int(bool(tableau.fsal)))
    return out


@dataclasses.dataclass(frozen=True)
class _Run:
    """Everything needed to integrate (and to resume): built by `simulate`, rebuilt by `resume`."""

    field: GradientField
    solver: Any
    controller: Any
    grid: np.ndarray
    chunk: int
    max_steps: int
    settings: dict


def _progress_bar(enabled: bool | None, total: int, start: int):
    """A bar over save points (the grid is log-spaced, so this is progress in log-time)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="gflow", unit="pt", dynamic_ncols=True)


def _execute(run: _Run, *, start_index: int, y_start, previous: Trajectory | None, config, spec,
             progress: bool | None, checkpoint: str | None) -> Trajectory:
    """Integrate `run.grid[start_index:]` chunk by chunk from `y_start`, appending to `previous`."""
    layout = run.field.layout
    grid, chunk = run.grid, run.chunk
    parts_t, parts_y, parts_l, parts_g = [], [], [], []
    if previous is not None:
        parts_t.append(np.asarray(previous.times))
        parts_y.append(np.asarray(jax.vmap(layout.flatten)(previous.params)))
        parts_l.append(np.asarray(previous.loss))
        parts_g.append(np.asarray(previous.grad_norm))
        stats = {k: previous.stats.get(k, 0) for k in ("num_accepted_steps", "num_rejected_steps", "wall_time_s")}
        # Counts the solver state keeps (Hessians, gradients) carry on from the checkpoint.
        stats.update({k: previous.stats[k] for k in _COUNTED_BY_SOLVER if k in previous.stats})
    else:
        l0, g0 = jax.value_and_grad(run.field.value)(y_start)
        parts_t.append(grid[:1])
        parts_y.append(np.asarray(y_start)[None])
        parts_l.append(np.asarray([l0]))
        parts_g.append(np.asarray([jnp.linalg.norm(g0)]))
        stats = {"num_accepted_steps": 0, "num_rejected_steps": 0, "wall_time_s": 0.0}
    status, message = "running", ""

    def snapshot(status: str, message: str) -> Trajectory:
        ys = np.concatenate(parts_y)
        stats.update(evaluation_counts(run.solver, stats["num_accepted_steps"] + stats["num_rejected_steps"]))
        return Trajectory(times=np.concatenate(parts_t), params=jax.vmap(layout.unflatten)(jnp.asarray(ys)),
                          loss=np.concatenate(parts_l), grad_norm=np.concatenate(parts_g), config=config, spec=spec,
                          settings=run.settings, stats=dict(stats), status=status, message=message)

    bar = _progress_bar(progress, len(grid) - 1, start_index)
    y = jnp.asarray(y_start)
    i = start_index
    try:
        while i < len(grid) - 1:
            j = min(i + chunk, len(grid) - 1)
            ts = np.full(chunk, grid[j])
            ts[: j - i] = grid[i + 1: j + 1]
            tic = time.perf_counter()
            t_out, ys, loss, gnorm, ok, hit_max, seg = _integrate_segment(
                run.field, run.solver, run.controller, y, grid[i], grid[j], jnp.asarray(ts), run.max_steps)
            ys = np.asarray(ys)
            stats["wall_time_s"] += time.perf_counter() - tic
            for k, v in seg.items():
                stats[k] = int(stats.get(k, 0)) + int(v)
            n_new = j - i
            reached = np.isfinite(np.asarray(t_out)[:n_new]) & np.all(np.isfinite(ys[:n_new]), axis=1)
            n_ok = int(np.argmin(reached)) if not reached.all() else n_new
            parts_t.append(grid[i + 1: i + 1 + n_ok])
            parts_y.append(ys[:n_ok])
            parts_l.append(np.asarray(loss)[:n_ok])
            parts_g.append(np.asarray(gnorm)[:n_ok])
            if bar is not None:
                bar.update(n_ok)
                if n_ok:
                    bar.set_postfix_str(f"t={grid[i + n_ok]:.3g} loss={float(loss[n_ok - 1]):.5f}")
            if not bool(ok) or n_ok < n_new:
                t_fail = float(grid[i + n_ok])
                if bool(hit_max):
                    status = "max_steps"
                    message = (f"stopped at t = {t_fail:.6g}: a chunk needed more than max_steps = {run.max_steps} "
                               "steps. Raise max_steps, loosen rtol/atol, or check the problem's stiffness.")
                elif bool(ok):  # diffrax finished, but the saved state is not finite
                    status = "nonfinite"
                    message = f"the state became non-finite after t = {t_fail:.6g} (loss overflow or NaN gradient)."
                else:
                    status = "solver_failure"
                    message = (f"the solver failed after t = {t_fail:.6g} (step size underflow or a non-finite "
                               "vector field); the points up to there are kept.")
                break
            y = jnp.asarray(ys[n_new - 1])
            i = j
            if checkpoint is not None:
                snapshot("running", f"checkpoint at t = {grid[i]:.6g} of {grid[-1]:.6g}").save(checkpoint)
        else:
            status, message = "success", f"integrated to t = {grid[-1]:.6g}"
    except KeyboardInterrupt:
        status = "interrupted"
        message = (f"interrupted by the user at t = {grid[i]:.6g}; the points computed so far are kept"
                   + (f" and saved in {checkpoint!r} (continue with gflow.resume)." if checkpoint else "."))
        print(f"\ngflow: {message}", file=sys.stderr)
    finally:
        if bar is not None:
            bar.close()
    traj = snapshot(status, message)
    if checkpoint is not None:
        traj.save(checkpoint)
    return traj


def simulate(params0: TransformerParams, markov_spec: MarkovSpec, t_span: tuple[float | int, float | int], *,
             config: TransformerConfig | None = None, loss: str = "auto", n_samples: int | None = None,
             key: PRNGKeyArray | None = None, solver=None, rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL,
             save_times=None, n_save: int = DEFAULT_N_SAVE, max_steps: int = 100_000,
             progress: bool | None = None, checkpoint: str | os.PathLike | None = None,
             chunk_size: int | None = None) -> Trajectory:
    """Integrate the gradient flow $\\dot\\theta = -\\nabla L(\\theta)$ from `params0` over `t_span`.

    **Arguments:**

    - `params0`: initial weights (`gflow.init_params`), `markov_spec`: the chain, `t_span`: `(t0, t1)`.
    - `config`: the architecture (default `TransformerConfig()`); must match `params0`.
    - `loss`: the population-loss method (`"auto"`, `"enumerate"`, `"counts"`, `"meanfield"`,
      `"sampled"` with `n_samples`, `key`).
    - `solver`: a diffrax adaptive solver, or its name (`"Kvaerno4"`, `"Tsit5"`,
      `"GradientFlowRosenbrock"`, ...), or `None` for gflow's default stiff solver, `GradientFlowBDF`
      (scipy's variable-order BDF method with Newton solves in a kept eigenbasis of the Hessian;
      docs/flow.md); above 2048 parameters the default is the explicit `Tsit5` (a dense Hessian no
      longer pays). `GradientFlowBDF` chooses its own steps and orders within `rtol`, `atol`; every
      other solver runs under a PID controller with `rtol`, `atol`. A `GradientFlowBDF` or
      `GradientFlowRosenbrock` instance passed here gets the same `rtol`, `atol` (its own are
      replaced), so solver and controller cannot disagree.
    - `save_times`: times to save at (`t0` is always saved); default `n_save` log-spaced times.
    - `max_steps`: the most steps one chunk of the save grid may take.
    - `progress`: a tqdm bar (default: on when stderr is a terminal).
    - `checkpoint`: a `.npz` path; the trajectory so far is written there (atomically) after every
      chunk, and `gflow.resume(path)` continues an interrupted run.
    - `chunk_size`: save points per chunk (default: the grid in about 10 chunks).

    **Returns:** a `Trajectory`. Solver failures (max_steps, non-finite state) and Ctrl-C return the
    points computed so far with `status` and `message` saying what happened; nothing is thrown away.
    """
    config = TransformerConfig() if config is None else config
    if not isinstance(config, TransformerConfig):
        raise ValueError(f"`config` must be a gflow.TransformerConfig; got {type(config)!r}.")
    if not isinstance(markov_spec, MarkovSpec):
        raise ValueError(f"`markov_spec` must be a gflow.MarkovSpec; got {type(markov_spec)!r}.")
    check_params(params0, config, markov_spec)
    t0, t1 = _check_t_span(t_span)
    _check_positive("rtol", rtol)
    _check_positive("atol", atol)
    _check_positive("max_steps", max_steps, integer=True)
    if save_times is None:
        _check_positive("n_save", n_save, integer=True)
        grid = default_save_times((t0, t1), max(int(n_save), 2))
    else:
        grid = _check_save_times(save_times, t0, t1)
    if chunk_size is None:
        chunk_size = max(1, math.ceil((len(grid) - 1) / DEFAULT_CHUNKS))
    _check_positive("chunk_size", chunk_size, integer=True)
    loss_fn = loss_function(markov_spec, config, loss, n_samples=n_samples, key=key)
    layout = ParamLayout.of(config, markov_spec)
    settings = {
        "loss": loss_fn.method, "n_samples": n_samples,
        "key": None if key is None else np.asarray(jax.random.key_data(key)).tolist(),
        "solver": solver_name(solver, default_solver(layout.size)),
        "rtol": float(rtol), "atol": float(atol), "max_steps": int(max_steps),
        "t_span": [t0, t1], "save_grid": grid.tolist(), "chunk_size": int(chunk_size),
    }
    run = _build_run(loss_fn, layout, settings, solver)
    y0 = run.field.layout.flatten(params0)
    return _execute(run, start_index=0, y_start=y0, previous=None, config=config, spec=markov_spec,
                    progress=progress, checkpoint=None if checkpoint is None else os.fspath(checkpoint))


def _build_run(loss_fn: LossFunction, layout: ParamLayout, settings: dict, solver=None) -> _Run:
    solver, controller = make_solver(settings["solver"] if solver is None else solver, settings["rtol"],
                                     settings["atol"])
    return _Run(field=GradientField(loss=loss_fn, layout=layout), solver=solver, controller=controller,
                grid=np.asarray(settings["save_grid"], dtype=np.float64), chunk=int(settings["chunk_size"]),
                max_steps=int(settings["max_steps"]), settings=settings)


def resume(path: str | os.PathLike, *, progress: bool | None = None) -> Trajectory:
    """Continue the run checkpointed at `path` from its last saved state, with the same settings.

    Because every chunk of the save grid restarts the step-size controller, the resumed result is
    identical to the uninterrupted run. A finished run is returned as it is.
    """
    path = os.fspath(path)
    traj = load(path)
    if traj.status == "success":
        return traj
    s = traj.settings
    key = None if s.get("key") is None else jax.random.wrap_key_data(jnp.asarray(s["key"], dtype=jnp.uint32))
    loss_fn = loss_function(traj.spec, traj.config, s["loss"], n_samples=s.get("n_samples"), key=key)
    run = _build_run(loss_fn, ParamLayout.of(traj.config, traj.spec), s)
    start = int(np.searchsorted(run.grid, traj.times[-1]))
    if start >= len(run.grid) or run.grid[start] != traj.times[-1]:
        raise ValueError(f"{path!r}: its last time {traj.times[-1]} is not on its save grid; the file is not a "
                         "checkpoint written by gflow.simulate.")
    y = run.field.layout.flatten(traj.final_params)
    return _execute(run, start_index=start, y_start=y, previous=traj, config=traj.config, spec=traj.spec,
                    progress=progress, checkpoint=path)
