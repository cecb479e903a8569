"""Gradient flow $\\dot\\theta = -\\nabla L(\\theta)$ of the population loss, integrated by diffrax.

`simulate` checks its arguments, writes them into a `RunRecord`, and hands the record to
`run_record`, which builds the solver and the vector field from it and runs the integration core
(`_integrate.py`). `resume` and the comparison with discrete training run a record too, so every
way of computing a flow goes through the same few lines.
"""

from __future__ import annotations

import os

import numpy as np
from jaxtyping import PRNGKeyArray

from ._checks import check_writable_file
from ._integrate import (
    DEFAULT_ATOL,
    DEFAULT_MAX_STEPS,
    DEFAULT_N_SAVE,
    DEFAULT_RTOL,
    GradientField,
    check_finite_start,
    check_flow_arguments,
    integrate,
    single_chunk_solver,
)
from ._layout import ParamLayout
from ._model import TransformerConfig, TransformerParams, check_params
from ._record import RunRecord, SolverSpec
from ._trajectory import RunStatus, Trajectory, load
from .data import AbstractDataSource
from .losses import loss_spec
from .solvers import default_solver, make_solver, solver_name


def check_problem(params0: TransformerParams, source, config) -> TransformerConfig:
    """The config (default `TransformerConfig()`), after checking it, the source and the parameters."""
    config = TransformerConfig() if config is None else config
    if not isinstance(config, TransformerConfig):
        raise ValueError(f"`config` must be a gflow.TransformerConfig; got {type(config)!r}.")
    if not isinstance(source, AbstractDataSource):
        raise ValueError(f"`markov_spec` must be a gflow data source such as gflow.MarkovSpec; got {type(source)!r}.")
    check_params(params0, config, source)
    return config


def flow_record(source, config, loss, *, t_span, grid, solver, rtol, atol, max_steps, chunk_size,
                kind: str = "flow", vmapped: bool = False, **extra) -> RunRecord:
    """The record of a flow (or ensemble) from checked arguments; `solver` as the user gave it
    (`vmapped`: the members are solved in one vmapped program, which changes the default solver)."""
    size = ParamLayout.of(config, source).size
    name = solver_name(solver, default_solver(size, ensemble=vmapped))
    spec = SolverSpec(name=name, rtol=rtol, atol=atol, max_steps=max_steps, chunk_size=chunk_size,
                      instance=None if isinstance(solver, str) else solver)
    return RunRecord(kind, source, config, loss, t_span, grid, solver=spec, **extra)


def solver_setup(record: RunRecord):
    """The solver a record names (or the instance it keeps), with the record's tolerances."""
    s = record.solver
    return make_solver(s.name if s.instance is None else s.instance, s.rtol, s.atol)


def run_record(record: RunRecord, params0: TransformerParams, *, progress: bool | None = None,
               checkpoint: str | os.PathLike | None = None) -> Trajectory:
    """Integrate the flow a record describes, from `params0`."""
    setup = solver_setup(record)
    field = GradientField(loss=record.loss_function(), layout=record.layout)
    y0 = np.asarray(record.layout.flatten(params0))[None]
    check_finite_start(y0)
    (traj,) = integrate(record, setup, field, single_chunk_solver(field, setup, record.solver.max_steps,
                                                                  storable=record.solver.instance is None), y0,
                        progress=progress, checkpoint=None if checkpoint is None else os.fspath(checkpoint))
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
    - `solver`: a name (`"GradientFlowBDF"`, `"GradientFlowKrylovBDF"`, `"GradientFlowRosenbrock"`,
      or an adaptive diffrax solver's class name such as `"Kvaerno4"`, `"Tsit5"`), an instance
      (`gflow.solvers.GradientFlowBDF(...)`, a diffrax solver), or `None` for gflow's default:
      `GradientFlowBDF` (scipy's variable-order BDF method with Newton solves in a kept eigenbasis of
      the Hessian; docs/flow.md) up to 256 parameters, above it `GradientFlowKrylovBDF` (the same
      steps, matrix-free Newton solves: no dense Hessian). On a short horizon that is not yet stiff,
      a large model runs faster with `"Tsit5"` (docs/flow.md). The BDF solvers choose their own steps
      and orders within `rtol`, `atol`; the others run under a PID controller
      with `rtol`, `atol`. A gflow solver instance gets these `rtol`, `atol` (its own are replaced),
      so solver and controller cannot disagree.
    - `save_times`: times to save at (`t0` is always saved); default `n_save` log-spaced times.
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
    args = check_flow_arguments(t_span, rtol=rtol, atol=atol, max_steps=max_steps, save_times=save_times,
                                n_save=n_save, chunk_size=chunk_size)
    spec = loss_spec(markov_spec, config, loss, n_samples=n_samples, key=key, dataset=dataset)
    record = flow_record(markov_spec, config, spec, t_span=args.t_span, grid=args.grid, solver=solver,
                         rtol=args.rtol, atol=args.atol, max_steps=args.max_steps, chunk_size=args.chunk_size)
    solver_setup(record)  # a bad solver name fails here, before anything runs
    if checkpoint is not None:
        checkpoint = check_writable_file("checkpoint", checkpoint)
    return run_record(record, params0, progress=progress, checkpoint=checkpoint)


def resume(path: str | os.PathLike, *, progress: bool | None = None) -> Trajectory:
    """Continue the run checkpointed at `path` from its last saved state, with the same record.

    Because every chunk of the save grid restarts the step-size controller, the resumed result is
    identical to the uninterrupted run. A finished run is returned as it is.
    """
    path = os.fspath(path)
    traj = load(path)
    if traj.status == RunStatus.SUCCESS:
        return traj
    record = traj.record
    if record.kind != "flow":
        raise ValueError(f"{path!r} holds a {record.kind} run; only single flows (gflow.simulate) can be resumed.")
    grid = record.save_times
    start = int(np.searchsorted(grid, traj.times[-1]))
    if start >= len(grid) or grid[start] != traj.times[-1]:
        raise ValueError(f"{path!r}: its last time {traj.times[-1]} is not on its save grid; the file is not a "
                         "checkpoint written by gflow.simulate.")
    setup = solver_setup(record)
    field = GradientField(loss=record.loss_function(), layout=record.layout)
    y = traj.flat_params()[-1:]
    (out,) = integrate(record, setup, field, single_chunk_solver(field, setup, record.solver.max_steps,
                                                                  storable=record.solver.instance is None),
                       y, start_index=start, previous=[traj], progress=progress, checkpoint=path)
    return out
