"""The arguments every flow entry point shares, checked once, and the record they make.

`simulate`, `simulate_many` and settings files (`[flow]`) all go through `flow_record`: it checks
the time span, tolerances, step budget and save grid, resolves the loss and the solver's name, and
returns the complete `RunRecord`. Every `ValueError` it raises is an `ArgumentError` naming the
argument, so a settings file can say which of its keys was wrong.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..common import check_memory, check_positive, checking, is_real
from ..data import AbstractDataSource
from ..losses import LossSpec, resolve_loss_spec
from ..model import ParamLayout, TransformerConfig, TransformerParams, check_params
from ..record import RunRecord, SolverSpec
from ..solvers import DENSE_HESSIAN_LIMIT, default_solver, solver_memory, solver_name

DEFAULT_RTOL = 1e-6
DEFAULT_ATOL = 1e-9
DEFAULT_N_SAVE = 241
DEFAULT_DECADES = 6
DEFAULT_CHUNKS = 10
DEFAULT_MAX_STEPS = 100_000


def default_save_times(t_span: tuple[float | int, float | int], n_save: int = DEFAULT_N_SAVE,
                       decades: float = DEFAULT_DECADES) -> np.ndarray:
    """`t0` followed by `n_save - 1` log-spaced times ending at `t1`.

    Small-initialisation dynamics span decades, so the grid is logarithmic: from `t0` when it is
    positive, else from `t1 * 10**-decades`.
    """
    t0, t1 = t_span
    start = t0 if t0 > 0 else t1 * 10.0 ** (-decades)
    if not start >= np.finfo(np.float64).tiny:
        raise ValueError(f"`t_span` ends at t1 = {t1!r}: the log-spaced save grid would start at {start!r}, below the "
                         "smallest normal float; use a larger t1 or give `save_times`.")
    grid = np.logspace(math.log10(start), math.log10(t1), n_save - 1 if t0 == 0 else n_save)
    grid[-1] = t1
    return np.concatenate([[t0], grid]) if t0 == 0 else grid


def _check_t_span(t_span) -> tuple[float, float]:
    # a string is a sequence too ("09" would be (0, 9)), and bools are numbers to Python: refuse both
    pair = None if isinstance(t_span, str | bytes) else (tuple(t_span) if isinstance(t_span, list | tuple | np.ndarray)
                                                         else None)
    if pair is None or len(pair) != 2 or not all(is_real(t) for t in pair):
        raise ValueError(f"`t_span` must be a pair (t0, t1) of numbers; got {t_span!r}.")
    t0, t1 = (float(t) for t in pair)
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
    # the grid spans t_span: t0 and t1 are saved too (a grid ending early would stop the run there,
    # while its record said t1); a time within round-off of either end is that end (a second point a
    # few ulps away would make the log-time rates divide by zero)
    ulps = 8 * np.finfo(np.float64).eps
    if t1 - ts[-1] <= ulps * t1:
        ts = np.concatenate([ts[:-1], [t1]])
    if 0 < ts[0] - t0 <= ulps * t0:  # (t0 = 0 is excluded from log time anyway)
        ts = np.concatenate([[t0], ts[1:]])
    return np.concatenate([[t0] if ts[0] > t0 else [], ts, [t1] if ts[-1] < t1 else []])


@dataclasses.dataclass(frozen=True)
class FlowArguments:
    """The checked arguments every flow entry point shares."""

    t_span: tuple[float, float]
    grid: np.ndarray
    rtol: float
    atol: float
    max_steps: int
    chunk_size: int


def check_flow_arguments(t_span, *, rtol, atol, max_steps, save_times, n_save, chunk_size) -> FlowArguments:
    """Check the time span, tolerances, step budget and save grid; an `ArgumentError` naming the bad one."""
    with checking("t_span"):
        t0, t1 = _check_t_span(t_span)
        if save_times is None:
            default_save_times((t0, t1), 2)  # refuses a span too short for a log-spaced grid
    with checking("rtol"):
        rtol = check_positive("rtol", rtol)
        if rtol >= 1:
            raise ValueError(f"`rtol` must be below 1 (a relative error of 100% a step); got {rtol!r}. gflow's "
                             f"default is {DEFAULT_RTOL:g}.")
    with checking("atol"):
        atol = check_positive("atol", atol)
    with checking("max_steps"):
        max_steps = check_positive("max_steps", max_steps, integer=True)
    if save_times is None:
        with checking("n_save"):
            n_save = max(check_positive("n_save", n_save, integer=True), 2)
            check_memory(f"a save grid of n_save = {n_save} times", 8 * 4 * n_save, "use a smaller n_save")
            grid = default_save_times((t0, t1), n_save)
    else:
        with checking("save_times"):
            grid = _check_save_times(save_times, t0, t1)
    if chunk_size is None:
        chunk_size = max(1, math.ceil((len(grid) - 1) / DEFAULT_CHUNKS))
    with checking("chunk_size"):
        chunk_size = check_positive("chunk_size", chunk_size, integer=True)
    # a chunk longer than the grid holds the grid's points (and pads nothing): same solve, no huge buffers
    return FlowArguments((t0, t1), grid, rtol, atol, max_steps, min(chunk_size, max(1, len(grid) - 1)))


def check_finite_start(y: np.ndarray, what: str = "params0") -> None:
    """Refuse a non-finite initial state: the flow from it is not defined."""
    bad = ~np.isfinite(y)
    if bad.any():
        raise ValueError(f"`{what}` holds {int(bad.sum())} non-finite entries (NaN or inf); the gradient flow needs "
                         "finite initial parameters.")


def check_problem(params0: TransformerParams | None, source, config) -> TransformerConfig:
    """The config (default `TransformerConfig()`), after checking it, the source and (unless `None`)
    the parameters, with `simulate`'s argument names."""
    config = TransformerConfig() if config is None else config
    if not isinstance(config, TransformerConfig):
        raise ValueError(f"`config` must be a gflow.TransformerConfig; got {type(config)!r}.")
    if not isinstance(source, AbstractDataSource):
        raise ValueError(f"`markov_spec` must be a gflow data source such as gflow.MarkovSpec; got {type(source)!r}.")
    if params0 is not None:
        check_params(params0, config, source)
    return config


def flow_record(source: AbstractDataSource, config: TransformerConfig, *, t_span, loss: str | LossSpec = "auto",
                n_samples=None, key=None, dataset=None, solver=None, rtol=DEFAULT_RTOL, atol=DEFAULT_ATOL,
                save_times=None, n_save=DEFAULT_N_SAVE, max_steps=DEFAULT_MAX_STEPS, chunk_size=None,
                kind: str = "flow", vmapped: bool = False, ensemble_size: int | None = None,
                devices: int | None = None, stacklevel: int = 4) -> RunRecord:
    """The record of a flow (or an ensemble member) from `simulate`'s arguments, every one checked
    here once. `source` and `config` must be checked already (`check_problem`); `solver` is as the
    user gave it (`vmapped`: the members are solved in one vmapped program, which changes the
    default solver). Raises `ArgumentError` naming the argument."""
    args = check_flow_arguments(t_span, rtol=rtol, atol=atol, max_steps=max_steps, save_times=save_times,
                                n_save=n_save, chunk_size=chunk_size)
    with checking("loss"):
        spec = resolve_loss_spec(source, config, loss, n_samples=n_samples, key=key, dataset=dataset,
                                 stacklevel=stacklevel)
    size = ParamLayout.of(config, source).size
    members = 1 if ensemble_size is None else ensemble_size
    with checking("n_save"):  # the saved states, kept, concatenated and unflattened: about three copies
        check_memory(f"{len(args.grid)} saved states of {size:,} parameters" + (f" for {members} members"
                     if members > 1 else ""), 3 * 8 * len(args.grid) * size * members,
                     "use a smaller n_save (or fewer save_times)")
    with checking("solver"):
        name = solver_name(solver, default_solver(size, ensemble=vmapped))
        check_memory(f"the solver {name} on {size:,} parameters", solver_memory(name, size),
                     "use the matrix-free GradientFlowKrylovBDF (the default above "
                     f"{DENSE_HESSIAN_LIMIT} parameters) or an explicit solver such as Tsit5")
        solver_spec = SolverSpec(name=name, rtol=args.rtol, atol=args.atol, max_steps=args.max_steps,
                                 chunk_size=args.chunk_size,
                                 instance=None if solver is None or isinstance(solver, str) else solver)
    return RunRecord(kind, source, config, spec, args.t_span, args.grid, solver=solver_spec,
                     ensemble_size=ensemble_size, devices=devices)
