"""Choosing the ODE solver and its step-size controller.

A solver is named by a string (`"Kvaerno4"`, any adaptive diffrax solver's class name) or passed
as a diffrax solver instance. Names are what trajectory files record, so that `resume` can rebuild
the same solver.

The default for single solves is gflow's `GradientFlowBDF` (`_bdf.py`): scipy's variable-order
BDF/NDF method inside diffrax, whose Newton solves use one kept eigendecomposition of the Hessian
(valid for every step size and order, thanks to the symmetry of a gradient flow's Jacobian). It
chooses its own steps and orders; `SolverChosenSteps` is the controller that carries them out.
`GradientFlowRosenbrock` (`_rosenbrock.py`), the previous default, can be named. Ensembles
(`simulate_many`) default to `Kvaerno4` instead: under `vmap` the "keep or recompute the Hessian"
branch becomes a select that computes both sides, so every member would pay an `eigh` at every step.

Named diffrax implicit solvers (`Kvaerno4`, ...) stop their simplified-Newton stage solves at
`NEWTON_FACTOR` (100) times the step tolerances: the Newton iterations of a stage only need to be
accurate well below the local error the controller accepts, and demanding more makes them fail and
the controller reject the step (docs/performance.md). Every solver but `GradientFlowBDF` runs under a
PID controller with gains 0.3/0.4.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax.numpy as jnp

from ._bdf import GradientFlowBDF, SolverChosenSteps
from ._rosenbrock import GradientFlowRosenbrock

DEFAULT_SOLVER = GradientFlowBDF.__name__
ENSEMBLE_DEFAULT_SOLVER = "Kvaerno4"
# Above this many parameters a dense Hessian (n^2 floats, n Hessian-vector products) and its
# eigendecomposition or LU (n^3) cost more than the explicit steps they save, and soon more memory
# than a workstation has (9216 parameters: 680 MB and minutes per Hessian): the default is then
# the explicit Tsit5.
DENSE_HESSIAN_LIMIT = 2048
LARGE_MODEL_SOLVER = "Tsit5"
NEWTON_FACTOR = 100.0


def default_solver(n_params: int, ensemble: bool = False) -> str:
    """The solver used when none is named, by model size and by whether the solve is vmapped."""
    if n_params > DENSE_HESSIAN_LIMIT:
        return LARGE_MODEL_SOLVER
    return ENSEMBLE_DEFAULT_SOLVER if ensemble else DEFAULT_SOLVER


def solver_name(solver, default: str) -> str:
    if solver is None:
        return default
    if isinstance(solver, str):
        return solver
    return type(solver).__name__


def _solver_from_name(name: str, rtol, atol):
    if name == GradientFlowRosenbrock.__name__:
        return GradientFlowRosenbrock(rtol=rtol, atol=atol)
    if name == GradientFlowBDF.__name__:
        return GradientFlowBDF(rtol=rtol, atol=atol)
    cls = getattr(diffrax, name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffrax.AbstractAdaptiveSolver)):
        raise ValueError(
            f"`solver` {name!r} is not an adaptive diffrax solver; use e.g. 'GradientFlowBDF', "
            "'GradientFlowRosenbrock', 'Kvaerno4', 'Kvaerno5', 'Tsit5', 'Dopri8', or pass a "
            "diffrax.AbstractAdaptiveSolver instance."
        )
    if issubclass(cls, diffrax.AbstractImplicitSolver):
        return cls(root_finder=diffrax.VeryChord(rtol=NEWTON_FACTOR * rtol, atol=NEWTON_FACTOR * atol))
    return cls()


def make_solver(solver, rtol: float, atol: float):
    """The solver instance and a PID step-size controller for it.

    Tolerances are arrays: a jitted solve then takes them as inputs, not as compile-time constants,
    so a new tolerance does not recompile. The proportional and integral gains 0.3 and 0.4 damp
    step-size oscillation on stiff problems (on the demo flow, Kvaerno5 goes from 2024 accepted +
    1971 rejected steps under the plain integral controller to 1571 + 532).
    """
    rtol = jnp.asarray(rtol, dtype=jnp.float64)
    atol = jnp.asarray(atol, dtype=jnp.float64)
    if isinstance(solver, str):
        solver = _solver_from_name(solver, rtol, atol)
    elif not isinstance(solver, (diffrax.AbstractAdaptiveSolver, GradientFlowBDF)):
        raise ValueError(f"`solver` must be a name or a diffrax adaptive solver; got {type(solver)!r}.")
    elif isinstance(solver, (GradientFlowRosenbrock, GradientFlowBDF)):
        solver = eqx.tree_at(lambda s: (s.rtol, s.atol), solver, (rtol, atol))
    if isinstance(solver, GradientFlowBDF):  # it chooses its steps and orders itself
        return solver, SolverChosenSteps(rtol=rtol, atol=atol)
    return solver, diffrax.PIDController(rtol=rtol, atol=atol, pcoeff=0.3, icoeff=0.4)
