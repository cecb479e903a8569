"""The integration core shared by `simulate`, `resume` and `simulate_many`.

A run's save grid is integrated in chunks. Each chunk is one call of a single compiled function (one
`diffeqsolve` from the chunk's first save time to its last, mapped over the members of an ensemble),
so the step loop never leaves XLA; between chunks Python records the points, updates the progress
bar, writes the checkpoint and notices Ctrl-C. Every chunk starts its step-size controller afresh:
a run resumed from a checkpoint therefore repeats an uninterrupted run bit for bit.

Argument checks, the save grid, the chunk loop, checkpoints, statuses and work counts live here
once; `simulate` and `simulate_many` differ only in the function that solves one chunk for a batch
of states (one state, or a sharded batch).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._checks import check_positive
from ._layout import ParamLayout
from ._programs import stored_program
from ._record import RunRecord
from ._trajectory import RunStatus, Trajectory
from .losses import LossFunction
from .solvers import AbstractGradientFlowSolver, SolverSetup, solver_counters

DEFAULT_RTOL = 1e-6
DEFAULT_ATOL = 1e-9
DEFAULT_N_SAVE = 241
DEFAULT_DECADES = 6
DEFAULT_CHUNKS = 10
DEFAULT_MAX_STEPS = 100_000
STEP_COUNTS = ("num_accepted_steps", "num_rejected_steps")


class GradientField(eqx.Module):
    """The vector field $-\\nabla L$ on the flat parameter vector."""

    loss: LossFunction
    layout: ParamLayout

    def value(self, y: Float[Array, " n"]):
        return self.loss(self.layout.unflatten(y))

    def __call__(self, t, y: Float[Array, " n"], args) -> Float[Array, " n"]:
        return -jax.grad(self.value)(y)


# ----------------------------------------------------------------------------------------------
# arguments and the save grid


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
    """Check the time span, tolerances, step budget and save grid; `ValueError` naming the bad one."""
    t0, t1 = _check_t_span(t_span)
    rtol, atol = check_positive("rtol", rtol), check_positive("atol", atol)
    max_steps = check_positive("max_steps", max_steps, integer=True)
    if save_times is None:
        grid = default_save_times((t0, t1), max(check_positive("n_save", n_save, integer=True), 2))
    else:
        grid = _check_save_times(save_times, t0, t1)
    if chunk_size is None:
        chunk_size = max(1, math.ceil((len(grid) - 1) / DEFAULT_CHUNKS))
    chunk_size = check_positive("chunk_size", chunk_size, integer=True)
    return FlowArguments((t0, t1), grid, rtol, atol, max_steps, chunk_size)


def check_finite_start(y: np.ndarray, what: str = "params0") -> None:
    """Refuse a non-finite initial state: the flow from it is not defined."""
    bad = ~np.isfinite(y)
    if bad.any():
        raise ValueError(f"`{what}` holds {int(bad.sum())} non-finite entries (NaN or inf); the gradient flow needs "
                         "finite initial parameters.")


# ----------------------------------------------------------------------------------------------
# one chunk


def solve_chunk(field: GradientField, solver, controller, y0, t0, t1, ts, max_steps: int):
    """One diffeqsolve from `t0` to `t1` saving at `ts`, plus loss and gradient norm there."""
    keeps_state = isinstance(solver, AbstractGradientFlowSolver)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field), solver, t0, t1, None, y0, saveat=diffrax.SaveAt(ts=ts, solver_state=keeps_state),
        stepsize_controller=controller, max_steps=max_steps, throw=False,
    )
    loss, grad = jax.vmap(jax.value_and_grad(field.value))(sol.ys)
    stats = {name: sol.stats[name] for name in STEP_COUNTS}
    if keeps_state:
        stats.update(solver_counters(solver, sol.solver_state))
    ok = sol.result == diffrax.RESULTS.successful
    hit_max = sol.result == diffrax.RESULTS.max_steps_reached
    return sol.ts, sol.ys, loss, jnp.linalg.norm(grad, axis=-1), ok, hit_max, stats


solve_one = eqx.filter_jit(solve_chunk)
"""One state's chunk, compiled once per problem shape."""

solve_many = eqx.filter_jit(eqx.filter_vmap(solve_chunk, in_axes=(None, None, None, 0, None, None, None, None)))
"""A batch of states' chunks in one vmapped solve (each member keeps its own step size)."""


@eqx.filter_jit
def _values_and_norms(field: GradientField, ys):
    loss, grad = jax.vmap(jax.value_and_grad(field.value))(ys)
    return loss, jnp.linalg.norm(grad, axis=-1)


ChunkSolver = Callable[[np.ndarray, float, float, np.ndarray], tuple]
"""`(states (B, n), t0, t1, save times) -> host arrays`, each with a leading batch axis B."""


def _solve_stored_chunk(static, dynamic, y0, t0, t1, ts):
    field, solver, controller, max_steps = eqx.combine(dynamic, static)
    return solve_chunk(field, solver, controller, y0, t0, t1, ts, max_steps)


def single_chunk_solver(field: GradientField, setup: SolverSetup, max_steps: int, *,
                        storable: bool = False) -> ChunkSolver:
    """One state's chunks. `storable` (the solver was built by gflow from its name): the compiled
    solve is stored on disk and loaded by later processes without tracing (`_programs.py`)."""
    dynamic, static = eqx.partition((field, setup.solver, setup.controller, max_steps), eqx.is_array)
    program = None

    def solve(y, t0, t1, ts):
        nonlocal program
        # device_put, not jnp.asarray: the latter compiles a small program per new shape
        args = tuple(jax.device_put(np.asarray(a, dtype=np.float64)) for a in (y[0], t0, t1, ts))
        if program is None:  # decided at the first chunk, when the argument shapes are known
            stored = stored_program("chunk", _solve_stored_chunk, static, (dynamic, *args)) if storable else None
            program = stored or (lambda dyn, *a: solve_one(*eqx.combine(dyn, static)[:3], *a, max_steps))
        out = program(dynamic, *args)
        return jax.tree.map(lambda a: np.asarray(a)[None], out)

    return solve


# ----------------------------------------------------------------------------------------------
# the chunk loop


def progress_bar(enabled: bool | None, total: int, start: int, desc: str = "gflow"):
    """A bar over save points (the grid is log-spaced, so this is progress in log-time)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc=desc, unit="pt", dynamic_ncols=True)


@dataclasses.dataclass
class _Member:
    """One trajectory under construction."""

    times: list
    ys: list
    loss: list
    grad_norm: list
    stats: dict
    status: RunStatus = RunStatus.RUNNING
    message: str = ""

    @classmethod
    def start(cls, t0: float, y0, loss0, grad_norm0) -> _Member:
        return cls([np.asarray([t0])], [np.array(y0)[None]], [np.asarray([loss0])], [np.asarray([grad_norm0])],
                   {name: 0 for name in STEP_COUNTS} | {"wall_time_s": 0.0})

    @classmethod
    def resume(cls, traj: Trajectory) -> _Member:
        keep = {k: v for k, v in traj.stats.items() if k in (*STEP_COUNTS, "wall_time_s") or k.startswith("num_")
                and not k.endswith("_estimate")}
        return cls([np.asarray(traj.times)], [traj.flat_params()], [np.asarray(traj.loss)],
                   [np.asarray(traj.grad_norm)], {name: 0 for name in STEP_COUNTS} | {"wall_time_s": 0.0} | keep)

    @property
    def alive(self) -> bool:
        return self.status == RunStatus.RUNNING

    def trajectory(self, record: RunRecord, setup: SolverSetup, status: RunStatus, message: str,
                   extra_stats: dict) -> Trajectory:
        stats = dict(self.stats)
        stats.update(setup.work_estimate(stats["num_accepted_steps"] + stats["num_rejected_steps"]))
        stats.update(extra_stats)
        ys = np.concatenate(self.ys)
        return Trajectory(times=np.concatenate(self.times), params=record.layout.unflatten_many(ys),
                          loss=np.concatenate(self.loss), grad_norm=np.concatenate(self.grad_norm), record=record,
                          stats=stats, status=status, message=message)


def _failure(hit_max: bool, solver_ok: bool, t_fail: float, max_steps: int) -> tuple[RunStatus, str]:
    if hit_max:
        return RunStatus.MAX_STEPS, (f"stopped at t = {t_fail:.6g}: a chunk needed more than max_steps = {max_steps} "
                                     "steps. Raise max_steps, loosen rtol/atol, or check the problem's stiffness.")
    if solver_ok:  # diffrax finished, but the saved state is not finite
        return RunStatus.NONFINITE, (f"the state became non-finite after t = {t_fail:.6g} (loss overflow or NaN "
                                     "gradient).")
    return RunStatus.SOLVER_FAILURE, (f"the solver failed after t = {t_fail:.6g} (step size underflow or a "
                                      "non-finite vector field); the points up to there are kept.")


def integrate(record: RunRecord, setup: SolverSetup, field: GradientField, chunk_solver: ChunkSolver,
              y_start: np.ndarray, *, start_index: int = 0, previous: list[Trajectory] | None = None,
              progress: bool | None = None, checkpoint: str | None = None,
              member_stats: Callable[[int], dict] = lambda b: {}) -> list[Trajectory]:
    """Integrate `record.save_times[start_index:]` chunk by chunk from the states `y_start` (B, n).

    Returns one `Trajectory` per state, appended to `previous` when resuming. A member that fails
    keeps the points it reached and stops; the others go on. `checkpoint` (single runs) is written
    after every chunk and at the end.
    """
    grid, chunk, max_steps = record.save_times, record.solver.chunk_size, record.solver.max_steps
    y = np.array(y_start, dtype=np.float64)
    if previous is not None:
        members = [_Member.resume(traj) for traj in previous]
    else:
        loss0, gnorm0 = (np.asarray(a) for a in _values_and_norms(field, jnp.asarray(y)))
        members = [_Member.start(grid[0], y[b], loss0[b], gnorm0[b]) for b in range(len(y))]

    def snapshots(status_of_alive: RunStatus, message_of_alive: str) -> list[Trajectory]:
        return [m.trajectory(record, setup, status_of_alive if m.alive else m.status,
                             message_of_alive if m.alive else m.message, member_stats(b))
                for b, m in enumerate(members)]

    bar = progress_bar(progress, len(grid) - 1, start_index)
    i = start_index
    final_status, final_message = RunStatus.SUCCESS, f"integrated to t = {grid[-1]:.6g}"
    try:
        while i < len(grid) - 1 and any(m.alive for m in members):
            for m in members:  # a state whose loss or gradient is not finite cannot be integrated further
                if m.alive and not (np.isfinite(m.loss[-1][-1]) and np.isfinite(m.grad_norm[-1][-1])):
                    m.status, m.message = RunStatus.NONFINITE, (
                        f"the loss or its gradient is not finite at t = {grid[i]:.6g} (the state itself is finite): "
                        "the flow stops there; the points up to there are kept.")
            if not any(m.alive for m in members):
                break
            j = min(i + chunk, len(grid) - 1)
            ts = np.full(chunk, grid[j])
            ts[: j - i] = grid[i + 1: j + 1]
            tic = time.perf_counter()
            t_out, ys, loss, gnorm, ok, hit_max, stats = chunk_solver(y, grid[i], grid[j], ts)
            wall = time.perf_counter() - tic
            n_new = j - i
            for b, m in enumerate(members):
                if not m.alive:
                    continue
                reached = np.isfinite(t_out[b, :n_new]) & np.all(np.isfinite(ys[b, :n_new]), axis=1)
                n_ok = n_new if reached.all() else int(np.argmin(reached))
                m.times.append(grid[i + 1: i + 1 + n_ok])
                m.ys.append(ys[b, :n_ok])
                m.loss.append(loss[b, :n_ok])
                m.grad_norm.append(gnorm[b, :n_ok])
                m.stats["wall_time_s"] += wall
                for name, count in stats.items():
                    m.stats[name] = int(m.stats.get(name, 0)) + int(count[b])
                if not bool(ok[b]) or n_ok < n_new:
                    m.status, m.message = _failure(bool(hit_max[b]), bool(ok[b]), float(grid[i + n_ok]), max_steps)
                else:
                    y[b] = ys[b, n_new - 1]
            if bar is not None:
                bar.update(n_new)
                if len(members) == 1 and members[0].alive:
                    bar.set_postfix_str(f"t={grid[j]:.3g} loss={float(loss[0, n_new - 1]):.5f}")
            i = j
            if checkpoint is not None and i < len(grid) - 1 and members[0].alive:
                snapshots(RunStatus.RUNNING, f"checkpoint at t = {grid[i]:.6g} of {grid[-1]:.6g}")[0].save(checkpoint)
    except KeyboardInterrupt:
        final_status = RunStatus.INTERRUPTED
        final_message = (f"interrupted by the user at t = {grid[i]:.6g}; the points computed so far are kept"
                         + (f" and saved in {checkpoint!r} (continue with gflow.resume)." if checkpoint else "."))
        print(f"\ngflow: interrupted at t = {grid[i]:.6g}; the points computed so far are kept.", file=sys.stderr)
    finally:
        if bar is not None:
            bar.close()
    out = snapshots(final_status, final_message)
    if checkpoint is not None:
        out[0].save(checkpoint)
    return out
