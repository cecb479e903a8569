"""The chunk loop shared by `simulate`, `resume`, `simulate_many` and the event re-solves.

`integrate(record, plan, states)` walks the record's save grid chunk by chunk, asking the plan's chunk
strategy to solve each (`_chunk.py`). Between chunks it records the points, updates the progress bar,
writes the checkpoint and notices Ctrl-C; it sets each member's status and keeps every point computed
before a failure. The loop is written once: one state or many, traced or stored solve, alike.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable

import jax
import numpy as np

from ..common import blas_threads_for, save_point_loop
from ..losses import loss_and_gradient_norm
from ..record import RunRecord, RunStatus, Trajectory
from ..solvers import AbstractGradientFlowSolver
from ._chunk import ChunkResult
from ._plan import RunPlan
from ._switching import EXPLICIT

STEP_COUNTS = ("num_accepted_steps", "num_rejected_steps")
METHOD_STATS = ("chunk_methods", "chunk_started_with", "next_method", "method_wall_time_s", "method_steps")
"""What a switching run records per member: the method of every chunk (and the one it started with:
a chunk the explicit method gave up on ends with the BDF), the one the next chunk calls for (which
`resume` continues with), and the wall time and attempted steps each method had."""

NEXT_EXPLICIT_STEP = "next_explicit_step"
"""A member's stat: the step an explicit method proposed at the end of its last chunk, which the next
chunk starts with (`solve_chunk`'s `first_step`). Absent after a BDF's chunk (its step is no guide to
an explicit method's, and the BDFs choose their own). Kept in checkpoints, so that `resume` continues
with the same steps."""


def loss_rise_allowed(loss: np.ndarray, rtol: float, scale: float) -> np.ndarray:
    """How far the loss may rise between two saved points before the run is stopped as inaccurate.

    Along $\\dot\\theta = -\\nabla L$ the loss never rises. A solver's local errors at relative
    tolerance `rtol` can move it up by about rtol times its size at most (tests/test_flow.py sees
    rises below 1e-9 of the loss at rtol 1e-6). A rise of $\\sqrt{\\mathrm{rtol}}$ of the loss (1e-3 at
    the default 1e-6) is far beyond that, and far below what the unstable explicit steps that too
    loose a tolerance lets through do (at rtol 0.5 the loss of a 3-token chain went from 1.10 to
    1e252 while every step passed its error test). `scale`, the run's first loss, sets a floor of
    1,000 ulps of it: a loss falling towards 0 (a deterministic chain) still wobbles by the round-off
    of the terms it was summed from."""
    return np.maximum(np.sqrt(rtol) * np.abs(loss), 1e3 * np.finfo(np.float64).eps * abs(scale))


MIN_SAVE_SLOTS = 16
"""The fewest save slots a chunk's compiled solve has (`save_slots`)."""


def save_slots(chunk_size: int) -> int:
    """How many save times a chunk's solve takes for chunks of `chunk_size` points: the next power of
    two, at least `MIN_SAVE_SLOTS`; the slots after a chunk's last point repeat its end time.

    The number of save times is a shape of the compiled solve, so without this every `n_save` (its
    default chunk is a tenth of the grid) compiled the solve again, 4-6 s on CPU each time for a
    3-token model (tests/test_stages.py: grids of 61, 121 and 241 points, three compilations).
    With it, every grid of up to 161 points in ten chunks shares one program, and larger ones one
    per doubling. A repeated save time costs one more copy of the state when the step that
    reaches the chunk's end is taken: nothing next to the step's own work."""
    return max(MIN_SAVE_SLOTS, 1 << max(0, chunk_size - 1).bit_length())


def failure_hint(record: RunRecord) -> str:
    """What a solver failure's message adds for this run's model: a ReLU MLP's loss has kinks (its
    gradient jumps where a pre-activation crosses 0), where adaptive steps can collapse; GELU is
    smooth. Seen on a full-block run (d_model 4, a ReLU MLP of 8 after LayerNorm, found by a review
    on 2026-12-04): both BDFs failed near t = 2.4, Dopri5 and Tsit5 spent 200,000 steps on the
    next 0.04 time units, and the same run with GELU reached its end."""
    config = record.config
    if config.mlp is not None and config.activation == "relu":
        return ("; this model's ReLU MLP makes the loss's gradient jump wherever a pre-activation crosses 0, where "
                "adaptive steps can collapse (activation = 'gelu' is smooth)")
    return ""


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
        keep = {k: v for k, v in traj.stats.items() if k in (*STEP_COUNTS, *METHOD_STATS, NEXT_EXPLICIT_STEP,
                                                              "wall_time_s")
                or k.startswith("num_") and not k.endswith("_estimate")}
        return cls([np.asarray(traj.times)], [traj.flat_params()], [np.asarray(traj.loss)],
                   [np.asarray(traj.grad_norm)], {name: 0 for name in STEP_COUNTS} | {"wall_time_s": 0.0} | keep)

    @property
    def alive(self) -> bool:
        return self.status == RunStatus.RUNNING

    def next_method(self, names: tuple[str, ...]) -> int:
        """The index in `names` of the method this member's next chunk calls for (0 at the start)."""
        return names.index(self.stats["next_method"]) if names and "next_method" in self.stats else 0

    def first_step(self) -> float:
        """The step this member's next chunk starts with if its method is explicit (NaN: the controller's rule)."""
        return float(self.stats.get(NEXT_EXPLICIT_STEP, np.nan))

    def carry_step(self, chunk: ChunkResult, b: int, explicit: bool) -> None:
        """Keep the step member `b`'s explicit method proposed at the end of `chunk` for the next one."""
        step = float(chunk.next_step[b])
        if explicit and np.isfinite(step) and step > 0:
            self.stats[NEXT_EXPLICIT_STEP] = step
        else:
            self.stats.pop(NEXT_EXPLICIT_STEP, None)

    def add_methods(self, chunk: ChunkResult, b: int, names: tuple[str, ...], wall: float) -> None:
        """Record which method solved member `b`'s chunk, and which its next chunk calls for."""
        used, following = names[int(chunk.methods[b])], names[int(chunk.next_methods[b])]
        called = self.stats.get("next_method", names[0])  # what this chunk was started with
        self.stats["chunk_methods"] = [*self.stats.get("chunk_methods", []), used]
        self.stats["chunk_started_with"] = [*self.stats.get("chunk_started_with", []), called]
        self.stats["next_method"] = following
        for key, value in (("method_wall_time_s", wall),
                           ("method_steps", int(chunk.accepted_steps[b]) + int(chunk.rejected_steps[b]))):
            totals = dict.fromkeys(names, 0) | dict(self.stats.get(key, {}))
            totals[used] += value
            self.stats[key] = totals

    def add(self, chunk: ChunkResult, b: int, grid: np.ndarray, i: int, n_new: int, wall: float,
            max_steps: int, tolerances: tuple[float, float], hint: str = "") -> np.ndarray | None:
        """Keep member `b`'s points of a chunk that started at save index `i`; its last state if it
        goes on, else `None` (its status then says why). Points after the loss has risen
        (`loss_rise_allowed`) are not kept: they are not the flow's."""
        reached = np.isfinite(chunk.times[b, :n_new]) & np.all(np.isfinite(chunk.states[b, :n_new]), axis=1)
        n_ok = n_new if reached.all() else int(np.argmin(reached))
        before = np.concatenate([[self.loss[-1][-1]], chunk.loss[b, :n_ok]])
        risen = np.flatnonzero(np.diff(before) > loss_rise_allowed(before[:-1], tolerances[0], self.loss[0][0]))
        if risen.size:
            n_ok = int(risen[0])
        self.times.append(grid[i + 1: i + 1 + n_ok])
        self.ys.append(chunk.states[b, :n_ok])
        self.loss.append(chunk.loss[b, :n_ok])
        self.grad_norm.append(chunk.grad_norm[b, :n_ok])
        self.stats["wall_time_s"] += wall
        counts = {"num_accepted_steps": chunk.accepted_steps, "num_rejected_steps": chunk.rejected_steps}
        for name, count in (counts | chunk.work).items():
            self.stats[name] = int(self.stats.get(name, 0)) + int(count[b])
        ok = bool(chunk.ok[b])
        if ok and n_ok == n_new:
            return chunk.states[b, n_new - 1]
        t_fail = float(grid[i + n_ok])
        if risen.size:
            k = int(risen[0])
            self.status = RunStatus.SOLVER_FAILURE
            self.message = RunStatus.SOLVER_FAILURE.describe("rising", before=float(before[k]),
                                                             after=float(before[k + 1]), t=float(grid[i + k + 1]),
                                                             rtol=tolerances[0], atol=tolerances[1], t_ok=t_fail)
        elif bool(chunk.hit_max_steps[b]):
            self.status, self.message = RunStatus.MAX_STEPS, RunStatus.MAX_STEPS.describe(t=t_fail,
                                                                                            max_steps=max_steps)
        elif ok:  # diffrax finished, but the saved state is not finite
            self.status, self.message = RunStatus.NONFINITE, RunStatus.NONFINITE.describe(t=t_fail)
        else:
            self.status = RunStatus.SOLVER_FAILURE
            self.message = RunStatus.SOLVER_FAILURE.describe(t=t_fail, h=float(chunk.last_step[b]), hint=hint)
        return None

    def trajectory(self, record: RunRecord, plan: RunPlan, status: RunStatus, message: str,
                   extra_stats: dict) -> Trajectory:
        stats = dict(self.stats)
        stats.update(plan.setup.work_estimate(stats["num_accepted_steps"] + stats["num_rejected_steps"]))
        stats.update(extra_stats)
        ys = np.concatenate(self.ys)
        return Trajectory(times=np.concatenate(self.times), params=record.layout.unflatten_many(ys),
                          loss=np.concatenate(self.loss), grad_norm=np.concatenate(self.grad_norm), record=record,
                          stats=stats, status=status, message=message)


def integrate(record: RunRecord, plan: RunPlan, y_start: np.ndarray, *, start_index: int = 0,
              previous: list[Trajectory] | None = None, progress: bool | None = None, checkpoint: str | None = None,
              member_stats: Callable[[int], dict] = lambda b: {},
              methods: list[str] | None = None) -> list[Trajectory]:
    """Integrate `record.save_times[start_index:]` chunk by chunk from the states `y_start` (B, n).

    Returns one `Trajectory` per state, appended to `previous` when resuming. A member that fails
    keeps the points it reached and stops; the others go on. `checkpoint` (single runs) is written
    after every chunk and at the end. `methods` (a new run of the switching default): the method
    each member's first chunk uses, one of `plan.method_names` (default: the first, explicit one).
    """
    grid, chunk = record.save_times, record.solver.chunk_size
    y = np.array(y_start, dtype=np.float64)
    if methods is not None:
        if previous is not None or len(methods) != len(y) or any(m not in plan.method_names for m in methods):
            raise ValueError(f"`method` must name one of the switching default's methods {plan.method_names} "
                             f"(one per state, for a new run); got {methods!r}. Leave it out for other solvers.")
    if previous is not None:
        members = [_Member.resume(traj) for traj in previous]
    else:
        loss0, gnorm0 = (np.asarray(a) for a in loss_and_gradient_norm(plan.field.loss, plan.layout,
                                                                        jax.device_put(y)))
        members = [_Member.start(grid[0], y[b], loss0[b], gnorm0[b]) for b in range(len(y))]
        for member, method in zip(members, methods or (), strict=False):
            member.stats["next_method"] = method

    def snapshots(status_of_alive: RunStatus, message_of_alive: str) -> list[Trajectory]:
        return [m.trajectory(record, plan, status_of_alive if m.alive else m.status,
                             message_of_alive if m.alive else m.message, member_stats(b))
                for b, m in enumerate(members)]

    i = start_index
    tolerances, hint = (record.solver.rtol, record.solver.atol), failure_hint(record)
    explicit = not isinstance(plan.setup.solver, AbstractGradientFlowSolver)  # of a plan with one method
    final_status, final_message = RunStatus.SUCCESS, RunStatus.SUCCESS.describe(t=grid[-1])
    with save_point_loop(progress, len(grid) - 1, start_index) as loop, blas_threads_for(y.shape[1]):
        while i < len(grid) - 1 and any(m.alive for m in members):
            for m in members:  # a state whose loss or gradient is not finite cannot be integrated further
                if m.alive and not (np.isfinite(m.loss[-1][-1]) and np.isfinite(m.grad_norm[-1][-1])):
                    m.status, m.message = RunStatus.NONFINITE, RunStatus.NONFINITE.describe("start", t=grid[i])
            if not any(m.alive for m in members):
                break
            j = min(i + chunk, len(grid) - 1)
            ts = np.full(save_slots(chunk), grid[j])
            ts[: j - i] = grid[i + 1: j + 1]
            methods = np.array([m.next_method(plan.method_names) for m in members])
            first_steps = np.array([m.first_step() for m in members])
            tic = time.perf_counter()
            result = plan.strategy.solve(plan, y, grid[i], grid[j], ts, methods, first_steps)
            wall = time.perf_counter() - tic
            for b, m in enumerate(members):
                if m.alive:
                    if result.methods is not None:
                        m.add_methods(result, b, plan.method_names, wall)
                    last = m.add(result, b, grid, i, j - i, wall, plan.max_steps, tolerances, hint)
                    if last is not None:
                        y[b] = last
                        used = explicit if result.methods is None else bool(result.methods[b] == EXPLICIT)
                        m.carry_step(result, b, used)
            single = len(members) == 1 and members[0].alive
            loop.advance(j - i, f"t={grid[j]:.3g} loss={float(result.loss[0, j - i - 1]):.5f}" if single else None)
            i = j
            if checkpoint is not None and i < len(grid) - 1 and members[0].alive:
                snapshots(RunStatus.RUNNING, RunStatus.RUNNING.describe(t=grid[i], t_end=grid[-1]))[0].save(checkpoint)
    if loop.interrupted:
        final_status = RunStatus.INTERRUPTED
        final_message = (RunStatus.INTERRUPTED.describe("checkpointed", t=grid[i], checkpoint=checkpoint)
                         if checkpoint else RunStatus.INTERRUPTED.describe(t=grid[i]))
        print(f"\ngflow: interrupted at t = {grid[i]:.6g}; the points computed so far are kept.", file=sys.stderr)
    out = snapshots(final_status, final_message)
    if checkpoint is not None:
        out[0].save(checkpoint)
    return out
