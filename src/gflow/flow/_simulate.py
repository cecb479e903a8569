"""Gradient flow $\\dot\\theta = -\\nabla L(\\theta)$ of the population loss, integrated by diffrax.

`simulate` checks its arguments once, writes them into a `RunRecord` (`flow_record`), makes the
run's plan once (`RunPlan.of`) and runs the chunk loop (`_loop.py`). `resume` continues a
checkpoint's record the same way, and everything else that computes a flow (the ensemble workers,
the event re-solves, the comparison with discrete training) goes through `run_record`.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from jaxtyping import PRNGKeyArray

from ..common import check_positive, check_writable_file, checking
from ..data import AbstractDataSource
from ..model import TransformerConfig, TransformerParams
from ..record import RunRecord, RunStatus, Trajectory, load
from ._arguments import (
    DEFAULT_ATOL,
    DEFAULT_MAX_STEPS,
    DEFAULT_N_SAVE,
    DEFAULT_RTOL,
    check_finite_start,
    check_problem,
    flow_record,
)
from ._loop import integrate
from ._plan import RunPlan


def run_record(record: RunRecord, params0: TransformerParams, *, plan: RunPlan | None = None,
               progress: bool | None = None, checkpoint: str | os.PathLike | None = None,
               method: str | None = None) -> Trajectory:
    """Integrate the flow a record describes, from `params0` (with `plan`, if the caller has made
    the record's plan already: one plan serves any save grid of the same record). `method`: for the
    switching default, the method its first chunk uses (default: the explicit one, as a new run
    starts); a re-solve between saved points of a run passes the run's own (`Trajectory.method_at`)."""
    y0 = np.asarray(record.layout.flatten(params0))[None]
    check_finite_start(y0)
    return continue_run(record, RunPlan.of(record) if plan is None else plan, y0, progress=progress,
                        checkpoint=checkpoint, method=method)


def continue_run(record: RunRecord, plan: RunPlan, y: np.ndarray, *, start_index: int = 0,
                 previous: Trajectory | None = None, progress: bool | None = None,
                 checkpoint: str | os.PathLike | None = None, method: str | None = None) -> Trajectory:
    """The one path of a single flow: from state `y` (1, n) at save index `start_index`, after the
    points of `previous` (a checkpoint), to the end of the record's grid."""
    (traj,) = integrate(record, plan, y, start_index=start_index, previous=None if previous is None else [previous],
                        progress=progress, checkpoint=None if checkpoint is None else os.fspath(checkpoint),
                        methods=None if method is None else [method])
    return traj


def simulate(params0: TransformerParams, markov_spec: AbstractDataSource, t_span: tuple[float | int, float | int], *,
             config: TransformerConfig | None = None, loss: str = "auto", n_samples: int | None = None,
             key: PRNGKeyArray | int | None = None, dataset=None, solver=None, rtol: float = DEFAULT_RTOL,
             atol: float = DEFAULT_ATOL, save_times=None, n_save: int = DEFAULT_N_SAVE,
             max_steps: int = DEFAULT_MAX_STEPS, progress: bool | None = None,
             checkpoint: str | os.PathLike | None = None, chunk_size: int | None = None) -> Trajectory:
    """Integrate the gradient flow $\\dot\\theta = -\\nabla L(\\theta)$ from `params0` over `t_span`.

    **Arguments:**

    - `params0`: initial weights (`gflow.init_params`), `markov_spec`: the data source (a
      `MarkovSpec`), `t_span`: `(t0, t1)`.
    - `config`: the architecture (default `TransformerConfig()`); must match `params0`.
    - `loss`: the population-loss method (`"auto"`, `"enumerate"`, `"counts"`, `"meanfield"`,
      `"sampled"` with `n_samples` and `key`, `"dataset"` with `dataset`; see `gflow.loss_function`).
    - `solver`: a name (`"GradientFlowSwitching"`, `"GradientFlowBDF"`, `"GradientFlowKrylovBDF"`,
      `"GradientFlowRosenbrock"`, or an adaptive diffrax solver's class name such as `"Kvaerno4"`,
      `"Tsit5"`), an instance (`gflow.solvers.GradientFlowBDF(...)`, a diffrax solver), or `None`
      for gflow's default, `"GradientFlowSwitching"`: chunk by chunk, `Tsit5` while the flow is not
      stiff and the BDF while it is (`GradientFlowBDF`, scipy's variable-order BDF method with
      Newton solves in a kept eigenbasis of the Hessian, up to 256 parameters; the matrix-free
      `GradientFlowKrylovBDF` above; docs/flow.md). The BDF solvers choose their own steps and
      orders within `rtol`, `atol`; the others run under a PID controller with `rtol`, `atol`. A
      gflow solver instance gets these `rtol`, `atol` (its own are replaced), so solver and
      controller cannot disagree.
    - `save_times`: times to save at (`t0` and `t1` are always saved, and `n_save` is then unused);
      default `n_save` log-spaced times.
    - `max_steps`: the most steps one chunk of the save grid may take.
    - `progress`: a tqdm bar (default: on when stderr is a terminal).
    - `checkpoint`: a `.npz` path; the trajectory so far is written there (atomically) after every
      chunk, and `gflow.resume(path)` continues an interrupted run.
    - `chunk_size`: save points per chunk (default: the grid in about 10 chunks).

    **Returns:** a `Trajectory` whose `record` says how it was computed. Solver failures (max_steps,
    non-finite state) and Ctrl-C return the points computed so far with `status` and `message` saying
    what happened; nothing is thrown away.
    """
    config = check_problem(params0, markov_spec, config)
    record = flow_record(markov_spec, config, t_span=t_span, loss=loss, n_samples=n_samples, key=key,
                         dataset=dataset, solver=solver, rtol=rtol, atol=atol, save_times=save_times, n_save=n_save,
                         max_steps=max_steps, chunk_size=chunk_size)
    plan = RunPlan.of(record)  # before the checkpoint's folder is made: nothing is written for a bad run
    if checkpoint is not None:
        checkpoint = check_writable_file("checkpoint", checkpoint)
    return run_record(record, params0, plan=plan, progress=progress, checkpoint=checkpoint)


def _without_failed_chunk(traj: Trajectory, chunk: int) -> Trajectory:
    """`traj` cut back to its last chunk boundary, its per-chunk methods too: the failed chunk's
    points and entries go, and the method it was started with is the one it starts with again (a
    file written before that was recorded: the method it ended with)."""
    done = (len(traj) - 1) // chunk
    traj = traj.head(done * chunk + 1)
    methods = traj.stats.get("chunk_methods")
    if not methods:
        return traj
    started = traj.stats.get("chunk_started_with", methods)
    stats = dict(traj.stats, chunk_methods=methods[:done])
    if "chunk_started_with" in traj.stats:
        stats["chunk_started_with"] = started[:done]
    if done < len(methods):
        stats["next_method"] = started[done]
    return dataclasses.replace(traj, stats=stats)


def check_resume_budget(traj: Trajectory, max_steps: int, name: str = "max_steps") -> None:
    """Refuse a new step budget under which the checkpoint `traj` would not be its run: one below the
    budget its finished chunks were solved under (a smaller one might have stopped one of them, so
    the continued run would be one no run of that budget gives), or, for a run that stopped at its
    budget, one that is not larger (it would stop at the same step again)."""
    old = traj.record.solver.max_steps
    if max_steps < old:
        raise ValueError(f"{name}: {max_steps} is below the budget the run's finished chunks were solved under "
                         f"({old}); a smaller one might have stopped one of them. Continue with at least {old}, or "
                         "start afresh with the smaller budget.")
    if traj.status == RunStatus.MAX_STEPS and max_steps == old:
        raise ValueError(f"{name}: the run stopped because a chunk needed more than {old} steps; with {old} it "
                         f"would stop there again. Give more than {old}.")


def resume(path: str | os.PathLike, *, progress: bool | None = None, max_steps: int | None = None) -> Trajectory:
    """Continue the run checkpointed at `path` from its last saved state, with the same record.

    Because every chunk of the save grid restarts the step-size controller (an explicit method with
    the step it proposed at the end of the chunk before, which the checkpoint keeps), the resumed
    result is identical to the uninterrupted run. A finished run is returned as it is. `max_steps`: a new step
    budget per chunk, for a run that stopped at its old one (status `max_steps`); the failed chunk is
    solved again from its first point, and the file's record then says the new budget (docs/flow.md).
    A budget below the run's own is refused (`check_resume_budget`), and so is resuming a run stopped
    at its budget without a larger one (it would stop at the same step again).
    """
    path = os.fspath(path)
    if max_steps is not None:
        with checking("max_steps"):
            max_steps = check_positive("max_steps", max_steps, integer=True)
    traj = load(path)
    if max_steps is not None:
        check_resume_budget(traj, max_steps)
    if traj.status == RunStatus.SUCCESS:
        return traj
    record = traj.record
    if record.kind != "flow":
        raise ValueError(f"{path!r} holds a {record.kind} run; only single flows (gflow.simulate) can be resumed.")
    if traj.status == RunStatus.MAX_STEPS and max_steps is None:
        check_resume_budget(traj, record.solver.max_steps, "max_steps (pass a larger one)")
    if max_steps is not None:
        record = dataclasses.replace(record, solver=dataclasses.replace(record.solver, max_steps=int(max_steps)))
    if traj.status not in (RunStatus.RUNNING, RunStatus.INTERRUPTED):
        # a chunk that failed kept the points it reached: solve it again from its first point with the
        # method it started with, so that the chunks are those of an uninterrupted run
        traj = _without_failed_chunk(traj, record.solver.chunk_size)
    grid = record.save_times
    start = int(np.searchsorted(grid, traj.times[-1]))
    if start >= len(grid) or grid[start] != traj.times[-1]:
        raise ValueError(f"{path!r}: its last time {traj.times[-1]} is not on its save grid; the file is not a "
                         "checkpoint written by gflow.simulate.")
    return continue_run(record, RunPlan.of(record), traj.flat_params()[-1:], start_index=start, previous=traj,
                        progress=progress, checkpoint=path)
