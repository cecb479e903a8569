"""One chunk of the save grid: the compiled solve, its named result, and the strategies that run it.

A run's save grid is integrated in chunks. Each chunk is one call of a single compiled function (one
`diffeqsolve` from the chunk's first save time to its last, mapped over the members of a batch), so
the step loop never leaves XLA; between chunks Python records the points, updates the progress bar,
writes the checkpoint and notices Ctrl-C (`_loop.py`). Every chunk starts its step-size controller
afresh, an explicit method with the step it proposed at the end of the chunk before (kept in the
checkpoint): a run resumed from a checkpoint therefore repeats an uninterrupted run bit for bit.

**The seam.** A chunk strategy (`AbstractChunkStrategy`) solves one chunk for a batch of states and
returns a `ChunkResult`; the loop knows nothing else about it. `SingleState` solves one state (the
compiled program stored on disk for later processes, `common/_programs.py`); `ShardedBatch` solves a
batch in one vmapped program laid out over devices; `SwitchingMethods` (`_switching.py`) hands each
member to the method its last chunk called for. A new backend is one more subclass (and one row of
`flow/_ensemble.py`'s `BATCHING` to offer it to ensembles): the result carries the last and proposed
step sizes, the rejected steps and the work of every member, the signals a stiffness test reads.
"""

from __future__ import annotations

import abc
from typing import NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Bool, Float, Int

from ..common import note_new_program, solve_checks_off, stored_program
from ..solvers import (
    AbstractGradientFlowSolver,
    fitted_to_chunk,
    last_step,
    last_step_recorded,
    proposed_step,
    solver_counters,
)


class ChunkResult(NamedTuple):
    """What one chunk gives back for a batch of `B` members (`m` save points per chunk).

    - `times`, `states`, `loss`, `grad_norm`: the saved points (non-finite where a member stopped);
    - `ok`: the solve ended successfully; `hit_max_steps`: it stopped at `max_steps`;
    - `accepted_steps`, `rejected_steps`: step counts over the chunk;
    - `last_step`, `next_step`: the last accepted step size (it may be cut short to land on the
      chunk's end) and the one the controller proposed after it (the signal of stiffness for an
      explicit method: it stays near the stability limit $h \\lambda_{max} \\approx$ const);
    - `work`: what the solver counted in its state (Hessians, gradients, Hessian-vector products);
    - `methods`, `next_methods`: for a strategy that switches methods, the index of the method each
      member used in this chunk and the one its next chunk calls for (`None` otherwise).
    """

    times: Float[Array | np.ndarray, "B m"]
    states: Float[Array | np.ndarray, "B m n"]
    loss: Float[Array | np.ndarray, "B m"]
    grad_norm: Float[Array | np.ndarray, "B m"]
    ok: Bool[Array | np.ndarray, " B"]
    hit_max_steps: Bool[Array | np.ndarray, " B"]
    accepted_steps: Int[Array | np.ndarray, " B"]
    rejected_steps: Int[Array | np.ndarray, " B"]
    last_step: Float[Array | np.ndarray, " B"]
    next_step: Float[Array | np.ndarray, " B"]
    work: dict[str, Int[Array | np.ndarray, " B"]]
    methods: Int[np.ndarray, " B"] | None = None
    next_methods: Int[np.ndarray, " B"] | None = None


SOLVED_FIELDS = len(ChunkResult._fields) - 2
"""The fields one solve computes (the method fields are the switching strategy's)."""


def solve_chunk(field, solver, controller, y0, t0, t1, ts, first_step, max_steps: int) -> ChunkResult:
    """One diffeqsolve from `t0` to `t1` saving at `ts`, plus loss and gradient norm there (one member,
    no batch axis; traceable). `first_step`: an explicit method's first step, the one its previous chunk
    proposed (`ChunkResult.next_step`), or NaN for the controller's initial-step rule (`_first_step`); gflow's BDFs
    choose their own."""
    keeps_state = isinstance(solver, AbstractGradientFlowSolver)
    solver = fitted_to_chunk(solver, t1, max_steps)  # the explicit default gives up on a chunk it would not finish
    term, controller = diffrax.ODETerm(field), last_step_recorded(controller)
    dt0 = None if keeps_state else _first_step(term, solver, controller, y0, t0, t1, first_step)
    sol = diffrax.diffeqsolve(
        term, solver, t0, t1, dt0, y0,
        saveat=diffrax.SaveAt(ts=ts, solver_state=keeps_state, controller_state=True),
        stepsize_controller=controller, max_steps=max_steps, throw=False,
    )
    loss, grad_norm = _at_saved_points(field, ts, sol.ys)
    work = solver_counters(solver, sol.solver_state, controller, sol.controller_state[0]) if keeps_state else {}
    return ChunkResult(times=sol.ts, states=sol.ys, loss=loss, grad_norm=grad_norm,
                       ok=sol.result == diffrax.RESULTS.successful,
                       hit_max_steps=sol.result == diffrax.RESULTS.max_steps_reached,
                       accepted_steps=sol.stats["num_accepted_steps"], rejected_steps=sol.stats["num_rejected_steps"],
                       last_step=last_step(sol.controller_state), next_step=proposed_step(sol.controller_state),
                       work=work)


def _first_step(term, solver, controller, y0, t0, t1, carried: Float[Array, ""]) -> Float[Array, ""]:
    """An explicit chunk's first step: `carried`, the step the same method proposed at the end of the
    previous chunk, when it is a positive number; else the PID controller's initial-step rule (Hairer,
    Norsett & Wanner's: two field evaluations, the smaller of 100 times $0.01\\,\\|y\\| / \\|f\\|$ and the
    step the second derivative allows). Until 2026-12-07 every chunk was given `dt0=None`, and diffrax
    0.7's `diffeqsolve` then starts at a fixed 0.01: its rule applies only to a bare `ODETerm`, and
    it receives the wrapped term. On a plateau Tsit5 then grew its step from 0.01 again in every
    chunk: problem I of `benchmarks/scale.py` took 58 steps over 10 chunks, 41 with this rule at every
    chunk, and 24 with the step carried (H: 61, then 25). Under `vmap` (`solve_many`) the branch
    becomes a select, so the rule's two evaluations are paid at every chunk there."""
    def chosen():
        t_next, _ = controller.init(term, t0, t1, y0, None, None, solver.func, solver.error_order(term))
        return jnp.asarray(t_next - t0, carried.dtype)

    usable = jnp.isfinite(carried) & (carried > 0)
    return jax.lax.cond(usable, lambda: carried, chosen)


def _at_saved_points(field, ts: Float[Array, " m"], ys: Float[Array, "m n"]
                     ) -> tuple[Float[Array, " m"], Float[Array, " m"]]:
    """The loss and $\\|\\nabla L\\|$ at each saved state, evaluated once per distinct save time.

    A chunk's solve has a fixed number of save slots (`_loop.save_slots`, at least 16), and the slots
    after its last point repeat its end time and state. Evaluated for every slot in one vmapped call,
    they cost problem B of docs/performance.md (9,216 parameters, the counts loss) 28 ms a chunk for 4
    real points: a quarter of its run. One slot at a time, a repeated slot copies the one before it,
    and a state the solve did not reach (non-finite) gets NaN without an evaluation. Under a batch's
    `vmap` (`solve_many`) the save times are shared, so repeated slots are still skipped; the test for
    an unreached state becomes a select there, and every member's state at a fresh slot is evaluated."""
    def value_and_norm(y):
        value, grad = jax.value_and_grad(field.value)(y)
        return value, jnp.linalg.norm(grad)

    repeated = jnp.concatenate([jnp.zeros(1, bool), ts[1:] == ts[:-1]])  # equal times hold equal states
    shapes = jax.eval_shape(value_and_norm, ys[0])
    nan = tuple(jnp.full(a.shape, jnp.nan, a.dtype) for a in shapes)

    def step(previous, slot):
        y, repeat = slot
        current = jax.lax.cond(repeat, lambda y: previous,
                               lambda y: jax.lax.cond(jnp.all(jnp.isfinite(y)), value_and_norm,
                                                      lambda y: nan, y), y)
        return current, current

    _, (loss, grad_norm) = jax.lax.scan(step, nan, (ys, repeated))
    return loss, grad_norm


solve_one = eqx.filter_jit(solve_chunk)
"""One state's chunk, compiled once per problem shape."""

solve_many = eqx.filter_jit(eqx.filter_vmap(solve_chunk, in_axes=(None, None, None, 0, None, None, None, 0, None)))
"""A batch of states' chunks in one vmapped solve (each member keeps its own step size)."""


def _solve_stored_chunk(static, dynamic, y0, t0, t1, ts, first_step):
    field, solver, controller, max_steps = eqx.combine(dynamic, static)
    # a plain tuple: a stored program's outputs must be pytrees that jax.export can serialise
    return tuple(solve_chunk(field, solver, controller, y0, t0, t1, ts, first_step, max_steps))[:SOLVED_FIELDS]


class AbstractChunkStrategy(abc.ABC):
    """How one chunk of the save grid is solved for a batch of states."""

    @abc.abstractmethod
    def solve(self, plan, states: Float[np.ndarray, "B n"], t0: float, t1: float, ts: Float[np.ndarray, " m"],
              methods: Int[np.ndarray, " B"] | None = None,
              first_steps: Float[np.ndarray, " B"] | None = None) -> ChunkResult:
        """The chunk from `t0` to `t1` saved at `ts`, for every row of `states`, under `plan`'s solver
        and vector field (`RunPlan`); host (numpy) arrays with a leading batch axis `B`. `methods`:
        the method each member's last chunk called for (`ChunkResult.next_methods`; strategies
        with one method ignore it). `first_steps`: each member's first step for an explicit method
        (`solve_chunk`; NaN or `None`: the controller's initial-step rule)."""


class SingleState(AbstractChunkStrategy):
    """One state at a time (`B = 1`), as `simulate` solves it. When the plan's solver was built by gflow
    from its name (`plan.storable`), the compiled solve is stored on disk and loaded by later processes
    without tracing (`common/_programs.py`); otherwise (a solver instance) it is traced as usual."""

    def __init__(self):
        # by argument shapes, decided at the first chunk of each (one plan per instance)
        self._programs: dict[tuple, object] = {}

    def solve(self, plan, states, t0, t1, ts, methods=None, first_steps=None) -> ChunkResult:
        with solve_checks_off():
            return self._solve(plan, states, t0, t1, ts, first_steps_of(first_steps, len(states))[0])

    def _solve(self, plan, states, t0, t1, ts, first_step) -> ChunkResult:
        dynamic, static = plan.partitioned
        # device_put, not jnp.asarray: the latter compiles a small program per new shape
        args = tuple(jax.device_put(np.asarray(a, dtype=np.float64)) for a in (states[0], t0, t1, ts, first_step))
        shapes = tuple(np.shape(a) for a in args)
        program = self._programs.get(shapes)
        if program is None:
            note_new_program()
            stored = stored_program("chunk", _solve_stored_chunk, static, (dynamic, *args)) if plan.storable else None
            program = ((lambda dyn, *a: ChunkResult(*stored(dyn, *a))) if stored is not None else
                       (lambda dyn, *a: solve_one(*eqx.combine(dyn, static)[:3], *a, plan.max_steps)))
            self._programs[shapes] = program
        out = program(dynamic, *args)
        return jax.tree.map(lambda a: np.asarray(a)[None], out)


class ShardedBatch(AbstractChunkStrategy):
    """The whole batch in one vmapped solve, padded to a multiple of `n_devices` and laid out over the
    first `n_devices` of `jax.devices()` (every process's devices in a multi-process job)."""

    def __init__(self, n_devices: int):
        self.n_devices = n_devices
        mesh = Mesh(np.asarray(jax.devices()[:n_devices]), ("batch",))
        self.sharding = NamedSharding(mesh, PartitionSpec("batch"))

    def solve(self, plan, states, t0, t1, ts, methods=None, first_steps=None) -> ChunkResult:
        n = len(states)
        padding = (-n) % self.n_devices
        padded = np.concatenate([states, np.repeat(states[-1:], padding, axis=0)])
        steps = first_steps_of(first_steps, n)
        steps = np.concatenate([steps, np.repeat(steps[-1:], padding)])
        with solve_checks_off():
            out = solve_many(plan.field, plan.setup.solver, plan.setup.controller, _to_devices(padded, self.sharding),
                             t0, t1, jnp.asarray(ts), _to_devices(steps, self.sharding), plan.max_steps)
        return jax.tree.map(lambda a: _to_host(a)[:n], out)


def first_steps_of(first_steps: Float[np.ndarray, " B"] | None, n: int) -> Float[np.ndarray, " B"]:
    """`first_steps` as a float64 array of `n` (NaN, the controller's initial-step rule, when `None`)."""
    return np.full(n, np.nan) if first_steps is None else np.asarray(first_steps, dtype=np.float64).reshape(n)


def _to_devices(batch: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array laid out by `sharding`, built from a host copy that every process holds.

    Each process fills only its own shards, so this works whether or not the sharding spans devices
    of other processes (`jax.device_put` of host data needs every device to be local).
    """
    batch = np.asarray(batch)
    return jax.make_array_from_callback(batch.shape, sharding, lambda index: batch[index])


def _to_host(array) -> np.ndarray:
    """The whole of a (possibly multi-process) batched array as numpy, on every process."""
    if not isinstance(array, jax.Array) or array.is_fully_addressable:
        return np.asarray(array)
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))
