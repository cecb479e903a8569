"""What gflow's integration driver needs from a gradient-flow solver, and nothing more.

diffrax drives any `AbstractSolver` through its methods; gflow's driver adds three needs, which a
solver that knows it integrates $\\dot y = -\\nabla L(y)$ answers itself:

- its tolerances, filled in at one place (`with_tolerances`), so that solver and step-size
  controller can never disagree;
- the step-size controller it must run under (`step_size_controller`);
- the work it counted in its state (`counters`: Hessians, gradients), and what can be estimated
  from the step count (`work_estimate`);
- for a solver that plans within one chunk of the save grid, the chunk's end and step budget
  (`fitted_to_chunk`, any solver with a `for_chunk` method: the switching default's explicit one).

The driver asks these through this base class (and `SolverSetup` for diffrax's own solvers); it
never tests for a concrete solver.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import diffrax
import equinox as eqx
from jaxtyping import Array, Float, Int


class AbstractGradientFlowSolver(diffrax.AbstractSolver):
    """A diffrax solver for gradient flows (autonomous vector field, symmetric Jacobian $-H$)."""

    rtol: eqx.AbstractVar[Float[Array, ""] | float]
    atol: eqx.AbstractVar[Float[Array, ""] | float]

    dense_hessian: ClassVar[bool] = False
    """It assembles the dense Hessian (n x n): its memory grows with the square of the parameters."""

    def with_tolerances(self, rtol, atol):
        """A copy of this solver with the given tolerances (those of its controller)."""
        return eqx.tree_at(lambda s: (s.rtol, s.atol), self, (rtol, atol))

    @abc.abstractmethod
    def step_size_controller(self) -> diffrax.AbstractStepSizeController:
        """The controller this solver runs under, with the solver's own tolerances."""

    def counters(self, solver_state) -> dict[str, Int[Array, ""]]:
        """Work counted in the solver state since `init` (traceable; summed over chunks by the driver)."""
        return {}

    def work_estimate(self, attempted_steps: int) -> dict[str, int]:
        """Work estimated from the number of attempted steps, where the state does not count it."""
        return {}


def fitted_to_chunk(solver: diffrax.AbstractSolver, t1, max_steps: int) -> diffrax.AbstractSolver:
    """`solver` as it runs over one chunk that ends at `t1` within `max_steps` steps: a solver with a
    `for_chunk(horizon, budget)` method returns its copy for them (`Tsit5UntilStiff` gives up on a
    chunk it would not finish); any other solver (diffrax's own) is returned as it is."""
    for_chunk = getattr(solver, "for_chunk", None)
    return solver if for_chunk is None else for_chunk(t1, max_steps)


PID_GAINS = (0.3, 0.4)
"""Proportional and integral gains of gflow's PID controllers: they damp step-size oscillation on
stiff problems (on the demo flow, Kvaerno5 goes from 2024 accepted + 1971 rejected steps under the
plain integral controller to 1571 + 532)."""


def pid_controller(rtol, atol) -> diffrax.PIDController:
    """The PID controller every solver but the self-stepping ones runs under."""
    return diffrax.PIDController(rtol=rtol, atol=atol, pcoeff=PID_GAINS[0], icoeff=PID_GAINS[1])
