"""A run's plan: everything its record determines, made once (`RunPlan.of(record)`) and handed down.

The solver with its tolerances and controller, the vector field, the parameter layout, the step
budget and the chunk strategy are built from the record once per run; the chunk loop, `resume`,
the ensemble workers and the event refinement's re-solves all take the plan instead of rebuilding
any of it.
"""

from __future__ import annotations

import dataclasses
import functools

import equinox as eqx
import jax
from jaxtyping import Array, Float

from ..losses import LossFunction
from ..model import ParamLayout
from ..record import RunRecord
from ..solvers import (
    EXPLICIT_MAX_STEPS,
    EXPLICIT_SOLVER,
    SWITCHING_SOLVER,
    SolverSetup,
    Tsit5UntilStiff,
    make_solver,
    stiff_solver,
)
from ._chunk import AbstractChunkStrategy, SingleState
from ._switching import SwitchingMethods


class GradientField(eqx.Module):
    """The vector field $-\\nabla L$ on the flat parameter vector."""

    loss: LossFunction
    layout: ParamLayout

    def value(self, y: Float[Array, " n"]):
        return self.loss(self.layout.unflatten(y))

    def __call__(self, t, y: Float[Array, " n"], args) -> Float[Array, " n"]:
        # The gradient with respect to the weights, flattened after: differentiating through the flat
        # vector's slices instead makes XLA assemble the result in one loop over every entry, with a
        # branch per weight (problem F of docs/performance.md: 27.4 µs a gradient against 23.7 µs)
        return -self.layout.flatten(jax.grad(self.loss)(self.layout.unflatten(y)))


@dataclasses.dataclass(frozen=True, eq=False)
class RunPlan:
    """What a record's flow is solved with.

    - `setup`: the solver (tolerances filled in) and its step-size controller;
    - `field`: $-\\nabla L$ on the flat vector of the record's layout;
    - `max_steps`: the most steps one chunk may take;
    - `storable`: the solver was built by gflow from its name, so its compiled solve may be stored
      on disk (a solver instance may hold code gflow cannot fingerprint);
    - `strategy`: how a chunk is solved (`SingleState` unless the caller chose another). A strategy
      that the record's solver implies (the switching default's `SwitchingMethods`) is chosen here,
      in `of`, so that every path that runs the record gets it;
    - `method_names`: the switching default's methods (explicit, stiff), `()` for one solver; the
      plan's own `setup` is then the stiff method's.
    """

    setup: SolverSetup
    field: GradientField
    max_steps: int
    storable: bool
    strategy: AbstractChunkStrategy

    method_names: tuple[str, ...] = ()

    @classmethod
    def of(cls, record: RunRecord, strategy: AbstractChunkStrategy | None = None) -> RunPlan:
        """The plan of `record`; its chunks solved by `strategy` (default `SingleState`). For the
        switching default, a plan per method under a `SwitchingMethods` strategy, each with its own
        `SingleState` (which keeps programs per plan), or both with the `strategy` given (one that
        keeps no per-plan state, as `ShardedBatch`)."""
        s = record.solver
        field = GradientField(loss=record.loss_function(), layout=record.layout)

        def plan(name_or_instance, strategy, max_steps=s.max_steps):
            return cls(make_solver(name_or_instance, s.rtol, s.atol), field, max_steps, s.instance is None,
                       SingleState() if strategy is None else strategy)

        if s.instance is not None or s.name != SWITCHING_SOLVER:
            return plan(s.name if s.instance is None else s.instance, strategy)
        names = (EXPLICIT_SOLVER, stiff_solver(record.layout.size))
        # the explicit method is recorded as Tsit5 (its steps are Tsit5's) and run as Tsit5UntilStiff
        methods = (plan(Tsit5UntilStiff(), strategy, min(s.max_steps, EXPLICIT_MAX_STEPS)), plan(names[1], strategy))
        return dataclasses.replace(methods[1], strategy=SwitchingMethods(methods, names), method_names=names)

    def with_strategy(self, strategy: AbstractChunkStrategy) -> RunPlan:
        """The same plan, its chunks solved by `strategy` (e.g. the single-state strategy wrapped for
        threads that share it)."""
        return dataclasses.replace(self, strategy=strategy)

    @property
    def layout(self) -> ParamLayout:
        return self.field.layout

    @functools.cached_property
    def partitioned(self):
        """`(dynamic, static)`: the arrays of (field, solver, controller, max_steps) and the rest, as a
        stored program takes them."""
        return eqx.partition((self.field, self.setup.solver, self.setup.controller, self.max_steps), eqx.is_array)
