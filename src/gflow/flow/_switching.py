"""The switching default: an explicit method while the flow is not stiff, gflow's BDF while it is.

LSODA's idea (Petzold 1983), applied per chunk of the save grid through the chunk seam. Every member
of a batch carries the method its last chunk called for; `SwitchingMethods` solves each chunk with
that method and decides the next one from what the chunk showed (`solvers/_stiffness.py`):

- after an **explicit** chunk (Tsit5): stiff when its steps were held by stability, $h\\rho \\geq
  \\beta/2$, with $h$ the step its controller proposed at the chunk's end, $\\rho$ the largest
  curvature of the loss there and $\\beta$ the method's stability boundary;
- after a **stiff** chunk (the BDF): explicit again when Tsit5, stepping at its stability limit
  $\\beta/\\rho$, would cover the BDF's proposed step at half the BDF's cost (counted from its work
  counters in gradient evaluations), with $\\rho$ extrapolated over the next chunk by its growth over
  this one (on problem C the curvature grew tenfold in the chunk after a switch back that its end
  value alone had called for).

A member whose explicit chunk fails (its step budget `EXPLICIT_MAX_STEPS` spent, a non-finite
state) solves the same chunk again with the stiff method, so the switch never fails where the BDF
alone would succeed; the steps it discarded are counted (`DISCARDED_EXPLICIT_STEPS`).

The decisions depend only on the chunk's results (no clocks), and every chunk starts its solver
afresh, so a run resumed from a checkpoint (which keeps the method the next chunk calls for)
repeats the uninterrupted run bit for bit.
"""

from __future__ import annotations

import equinox as eqx
import jax
import numpy as np

from ..common import note_new_program, stored_program
from ..solvers import explicit_cheaper, implicit_step_cost, largest_curvature, stability_boundary, stability_limited
from ._chunk import AbstractChunkStrategy, ChunkResult, first_steps_of

EXPLICIT, STIFF = 0, 1
"""Method indices, as `ChunkResult.methods` and the trajectories' `chunk_methods` use them."""
DISCARDED_EXPLICIT_STEPS = "num_discarded_explicit_steps"
"""The work counter (and run statistic) of the steps explicit solves took in chunks they failed
(`EXPLICIT_MAX_STEPS` spent, or a non-finite state) and the BDF then solved: work the run paid for
that its other counters leave out. The chunk's wall time counts under the BDF."""

MIN_EXPLICIT_STEPS = 24
"""An explicit chunk of fewer attempted steps stays explicit without a stiffness test (whose 12
Hessian-vector products would cost a good part of such a chunk: 15-30% of the whole run on problem
B). The BDF restarts at order 1 in every chunk and raises its order only after k + 1 equal steps, so
it spends at least 2 + 3 + 4 + 5 = 14 steps at low order, each with a Newton solve, before it can
take long ones: a chunk Tsit5 covers in fewer than 24 steps is not one it could do more cheaply. A
chunk that turns stiff inside it is caught by the next chunk's test, or, if it spends the step
budget, solved again by the BDF."""

def _curvatures(field, ys):
    return jax.vmap(largest_curvature, in_axes=(None, 0))(field, ys)


def _stored_curvatures(static, dynamic, ys):
    return _curvatures(eqx.combine(dynamic, static), ys)


_traced_curvatures = eqx.filter_jit(_curvatures)


class SwitchingMethods(AbstractChunkStrategy):
    """Each member's chunk solved by the method its previous chunk called for (module docstring).

    `plans`: the explicit and the stiff plans (`RunPlan`s, each with its own inner strategy, e.g. a
    `SingleState` or a `ShardedBatch`); `names`: their solvers' names, for the record.
    """

    def __init__(self, plans: tuple, names: tuple[str, str]):
        self.plans, self.names = plans, names
        tableau = plans[EXPLICIT].setup.solver.tableau
        self.boundary = stability_boundary(tableau)
        self.explicit_cost = float(int(tableau.num_stages) - int(bool(tableau.fsal)))
        self.stiff_solver = plans[STIFF].setup.solver
        self._programs: dict[tuple, object] = {}  # the curvature program, by batch shape

    def curvatures(self, plan, ends: np.ndarray) -> np.ndarray:
        """The largest curvature at each row of `ends`: a stored program when the plan's is (so that
        a new process does not trace it again), else traced once per shape."""
        dynamic, static = eqx.partition(plan.field, eqx.is_array)
        ys = jax.device_put(np.asarray(ends, dtype=np.float64))
        program = self._programs.get(ys.shape)
        if program is None:
            note_new_program()
            stored = stored_program("curvature", _stored_curvatures, static, (dynamic, ys)) if plan.storable else None
            program = stored if stored is not None else (lambda dyn, y: _traced_curvatures(eqx.combine(dyn, static), y))
            self._programs[ys.shape] = program
        return np.asarray(program(dynamic, ys))

    def solve(self, plan, states, t0, t1, ts, methods=None, first_steps=None) -> ChunkResult:
        n = len(states)
        used = np.zeros(n, dtype=np.int64) if methods is None else np.array(methods, dtype=np.int64)
        steps = first_steps_of(first_steps, n)
        parts = [self._solve(k, states, np.nonzero(used == k)[0], t0, t1, ts, steps) for k in (EXPLICIT, STIFF)]
        discarded = np.zeros(n, dtype=np.int64)  # the steps of explicit solves that failed
        if parts[EXPLICIT] is not None:  # an explicit chunk that failed is solved again by the stiff method
            idx, result = parts[EXPLICIT]
            failed = ~(np.asarray(result.ok) & np.all(np.isfinite(result.states[:, -1]), axis=1))
            if failed.any():
                used[idx[failed]] = STIFF
                kept = idx[~failed]
                parts[EXPLICIT] = None if kept.size == 0 else (kept, _rows(result, ~failed))
                parts.append(self._solve(STIFF, states, idx[failed], t0, t1, ts, steps))
                attempted = np.asarray(result.accepted_steps) + np.asarray(result.rejected_steps)
                discarded[idx[failed]] = attempted[failed]
        merged = _merge([p for p in parts if p is not None], n)
        merged.work[DISCARDED_EXPLICIT_STEPS] = discarded
        return merged._replace(methods=used, next_methods=self._next(merged, used, plan, states))

    def _solve(self, k: int, states, idx, t0, t1, ts, first_steps):
        if idx.size == 0:
            return None
        return idx, self.plans[k].strategy.solve(self.plans[k], states[idx], t0, t1, ts, first_steps=first_steps[idx])

    def _next(self, chunk: ChunkResult, used, plan, starts) -> np.ndarray:
        """The method each member's next chunk calls for, from this chunk's steps and work and the
        curvature at its end (for a stiff chunk, extrapolated over the next chunk by its growth
        over this one: the curvature grows as attention sharpens, and a chunk of the log-spaced
        grid spans as many e-folds of time as the next)."""
        ends = np.asarray(chunk.states[:, -1])
        finite = np.all(np.isfinite(ends), axis=1)
        attempted = np.asarray(chunk.accepted_steps) + np.asarray(chunk.rejected_steps)
        # an explicit chunk too short for the BDF to pay keeps its method without a curvature
        finite &= (used == STIFF) | (attempted >= MIN_EXPLICIT_STEPS)
        curvature = np.zeros(len(used))
        if finite.any():
            curvature[finite] = self.curvatures(plan, ends[finite])
        stiff = finite & (used == STIFF)
        if stiff.any():
            before = self.curvatures(plan, np.asarray(starts)[stiff])
            growth = np.where(before > 0, curvature[stiff] / np.where(before > 0, before, 1.0), 1.0)
            curvature[stiff] *= np.maximum(growth, 1.0)
        out = used.copy()
        n_params = ends.shape[1]
        for b in np.nonzero(finite)[0]:  # the others keep their method
            step = float(chunk.next_step[b])
            if used[b] == EXPLICIT:
                out[b] = STIFF if stability_limited(step, curvature[b], self.boundary) else EXPLICIT
            else:
                steps = int(chunk.accepted_steps[b]) + int(chunk.rejected_steps[b])
                cost = implicit_step_cost({k: int(v[b]) for k, v in chunk.work.items()}, steps, self.stiff_solver,
                                          n_params)
                out[b] = EXPLICIT if explicit_cheaper(step, curvature[b], self.boundary, cost,
                                                      self.explicit_cost) else STIFF
        return out


def _rows(result: ChunkResult, mask) -> ChunkResult:
    return jax.tree.map(lambda a: np.asarray(a)[mask], result)


def _merge(parts: list[tuple[np.ndarray, ChunkResult]], n: int) -> ChunkResult:
    """One result of `n` rows from the results of disjoint groups of members (work counters a
    method does not keep are zero for its members)."""
    names = sorted({k for _, r in parts for k in r.work})
    fields = {}
    for field in ChunkResult._fields:
        if field in ("work", "methods", "next_methods"):
            continue
        first = np.asarray(getattr(parts[0][1], field))
        out = np.zeros((n, *first.shape[1:]), dtype=first.dtype)
        for idx, r in parts:
            out[idx] = np.asarray(getattr(r, field))
        fields[field] = out
    work = {}
    for name in names:
        counts = np.zeros(n, dtype=np.int64)
        for idx, r in parts:
            if name in r.work:
                counts[idx] = np.asarray(r.work[name])
        work[name] = counts
    return ChunkResult(**fields, work=work)

