"""Choosing the ODE solver, filling in its tolerances and pairing it with its step-size controller.

A solver is named by a string (a row of `SOLVERS`, or any adaptive diffrax solver's class name) or
passed as an instance. Names are what trajectory files record, so that `resume` can rebuild the
same solver.

The default for single solves is `"GradientFlowSwitching"`: chunk by chunk of the save grid, the
explicit `Tsit5` while the flow is not stiff and gflow's BDF when it is (LSODA's idea; the test is in
`_stiffness.py`, the switching in `flow/_switching.py`). Its stiff method is `GradientFlowBDF`
(scipy's variable-order BDF/NDF method inside diffrax, with Newton solves in one kept
eigendecomposition of the Hessian; `_bdf.py`) up to `DENSE_HESSIAN_LIMIT` parameters and the
matrix-free `GradientFlowKrylovBDF` above. Vmapped ensembles (`simulate_many(batching="vmap")`)
default to `Kvaerno4` instead: under `vmap` the "keep or recompute the Hessian" branch becomes a
select that computes both sides, so every member would pay an `eigh` at every step.

Named diffrax implicit solvers (`Kvaerno4`, ...) stop their simplified-Newton stage solves at
`NEWTON_FACTOR` (100) times the step tolerances: the Newton iterations of a stage only need to be
accurate well below the local error the controller accepts, and demanding more makes them fail and
the controller reject the step (docs/performance.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import diffrax
import jax.numpy as jnp

from ._base import AbstractGradientFlowSolver, pid_controller
from ._bdf import GradientFlowBDF
from ._chosen_steps import rejected_work
from ._krylov import GradientFlowKrylovBDF
from ._rosenbrock import GradientFlowRosenbrock

SOLVERS: dict[str, type[AbstractGradientFlowSolver]] = {
    GradientFlowBDF.__name__: GradientFlowBDF,
    GradientFlowRosenbrock.__name__: GradientFlowRosenbrock,
    GradientFlowKrylovBDF.__name__: GradientFlowKrylovBDF,
}
"""gflow's own gradient-flow solvers by name (diffrax's adaptive solvers can be named too)."""

SWITCHING_SOLVER = "GradientFlowSwitching"
"""The name of the switching default: not a diffrax solver but a pair of them, chosen per chunk."""
EXPLICIT_SOLVER = "Tsit5"
"""The switching default's method on stretches that are not stiff."""
EXPLICIT_MAX_STEPS = 5_000
"""The most steps the switching default's explicit method may take in one chunk (or the run's
`max_steps`, if smaller); a chunk that needs more is solved again by the BDF, as one that fails.
An explicit chunk that turns stiff inside it is cut to steps of its stability limit, and without
this budget it spent the run's whole `max_steps` (100,000 Tsit5 steps, 8 minutes on problem D)
before the BDF took over. The budget in BDF work: a Tsit5 step costs 1/10-1/14 of a Krylov BDF
attempt (measured on problems C and D: 0.36 against 3.7-4.5 ms, 4.8 against 45-67 ms), so 5,000
discarded steps cost about 350-500 BDF attempts, a fraction of a stiff chunk there (C's stiff chunks
take 2,200 attempts in all, D's last one 3,700); and an explicit chunk that needs more than 5,000
steps is cheaper than the BDF only where the BDF would take fewer than 350-500 attempts. The
explicit method (`Tsit5UntilStiff`) gives up sooner on a chunk whose end lies beyond this budget at
the steps stability holds it to (`_explicit.py`)."""
DEFAULT_SOLVER = SWITCHING_SOLVER
ENSEMBLE_DEFAULT_SOLVER = "Kvaerno4"
# Above this many parameters a dense Hessian (n^2 floats, n Hessian-vector products) and its
# eigendecomposition (n^3) cost more than a few Hessian-vector products per Newton solve, and soon
# more memory than a workstation has (9216 parameters: 680 MB and minutes per Hessian): the default
# is then the matrix-free GradientFlowKrylovBDF. Measured crossover (docs/performance.md, 2 cores,
# t to 1e5): at 192 parameters the dense solver is 1.5x faster, at 384 the Krylov one is 2.8x
# faster, at 640-768 about 9x. Vmapped ensembles use the explicit Tsit5 above the limit.
DENSE_HESSIAN_LIMIT = 256
VMAPPED_HESSIAN_LIMIT = 2048
"""Vmapped ensembles run Kvaerno4 (a Hessian per step) up to this size, Tsit5 above."""
LARGE_MODEL_SOLVER = GradientFlowKrylovBDF.__name__
LARGE_ENSEMBLE_SOLVER = "Tsit5"
NEWTON_FACTOR = 100.0


def default_solver(n_params: int, ensemble: bool = False) -> str:
    """The solver used when none is named: the switching default, or for a vmapped solve one fixed
    method by model size."""
    if ensemble:
        return LARGE_ENSEMBLE_SOLVER if n_params > VMAPPED_HESSIAN_LIMIT else ENSEMBLE_DEFAULT_SOLVER
    return DEFAULT_SOLVER


def stiff_solver(n_params: int) -> str:
    """The BDF the switching default uses on stiff stretches: dense Hessian up to
    `DENSE_HESSIAN_LIMIT` parameters, matrix-free above."""
    return LARGE_MODEL_SOLVER if n_params > DENSE_HESSIAN_LIMIT else GradientFlowBDF.__name__


def solver_name(solver, default: str) -> str:
    """The name a trajectory records for `solver` (`default` when it is `None`)."""
    if solver is None:
        return default
    if isinstance(solver, str):
        return solver
    return type(solver).__name__


def check_solver_name(name: str) -> str:
    """`name` if it names a solver gflow can build, else `ValueError` listing some that it can."""
    if name == SWITCHING_SOLVER:
        return name
    cls = (SOLVERS.get(name) or getattr(diffrax, name, None)) if isinstance(name, str) else None
    if not (isinstance(cls, type) and (issubclass(cls, AbstractGradientFlowSolver)
                                       or issubclass(cls, diffrax.AbstractAdaptiveSolver))):
        raise ValueError(
            f"`solver` {name!r} is not an adaptive solver; use one of {sorted([*SOLVERS, SWITCHING_SOLVER])}, "
            "or a diffrax adaptive "
            "solver such as 'Kvaerno4', 'Kvaerno5', 'Tsit5', 'Dopri8', or pass a solver instance."
        )
    return name


def solver_memory(solver, n_params: int) -> int:
    """Bytes a solver's linear algebra holds for `n_params` parameters: a dense Hessian, its
    eigenvectors and `eigh`'s workspace (about four n x n matrices) for gflow's dense solvers and
    diffrax's implicit ones; a few vectors otherwise (the Krylov solver's kept pairs are counted too)."""
    if solver == SWITCHING_SOLVER:
        solver = stiff_solver(n_params)
    cls = type(solver) if not isinstance(solver, str) else (SOLVERS.get(solver) or getattr(diffrax, solver, None))
    dense = isinstance(cls, type) and (getattr(cls, "dense_hessian", False) or
                                        issubclass(cls, diffrax.AbstractImplicitSolver))
    return 8 * (4 * n_params * n_params if dense else 64 * n_params)


def check_solver(solver):
    """`solver` if gflow can run it (a name it can build, or an adaptive solver instance), else
    `ValueError` saying what it takes. Nothing is built."""
    if isinstance(solver, str):
        return check_solver_name(solver)
    if not isinstance(solver, (diffrax.AbstractAdaptiveSolver, AbstractGradientFlowSolver)):
        raise ValueError(f"`solver` must be a name or an adaptive solver instance; got {type(solver)!r}.")
    return solver


def _from_name(name: str, rtol, atol):
    if name in SOLVERS:
        return SOLVERS[name](rtol=rtol, atol=atol)
    cls = getattr(diffrax, name)
    if issubclass(cls, diffrax.AbstractImplicitSolver):
        return cls(root_finder=diffrax.VeryChord(rtol=NEWTON_FACTOR * rtol, atol=NEWTON_FACTOR * atol))
    return cls()


@dataclasses.dataclass(frozen=True)
class SolverSetup:
    """A solver with its tolerances filled in and the step-size controller it runs under."""

    solver: Any
    controller: diffrax.AbstractStepSizeController

    @property
    def keeps_state(self) -> bool:
        """Whether the driver should read work counts from the solver's final state."""
        return isinstance(self.solver, AbstractGradientFlowSolver)

    def work_estimate(self, attempted_steps: int) -> dict[str, int]:
        """Work estimated from the step count (diffrax reports no evaluation counts).

        diffrax's implicit (ESDIRK) methods assemble one Jacobian (here the Hessian, by forward-over-
        reverse differentiation) per attempted step: that count is exact. Gradient evaluations are
        estimated as (stages - 1 if first-same-as-last, else stages) per attempted step; for implicit
        methods each stage also costs Newton iterations, which diffrax does not report, so no
        gradient count is given.
        """
        if isinstance(self.solver, AbstractGradientFlowSolver):
            return self.solver.work_estimate(attempted_steps)
        tableau = getattr(self.solver, "tableau", None)
        if tableau is None:
            return {}
        stages = int(tableau.num_stages)
        out = {"stages_per_step": stages}
        if isinstance(self.solver, diffrax.AbstractImplicitSolver):
            out["num_hessian_evaluations"] = int(attempted_steps)
        else:
            out["num_gradient_evaluations_estimate"] = int(attempted_steps) * (stages - int(bool(tableau.fsal)))
        return out


def solver_counters(solver, solver_state, controller=None, controller_state=None) -> dict:
    """Work counted in the final solver state, plus the rejected attempts' work that `controller`
    (the solve's step-size controller, if given) kept in its final state (traceable): only gflow's
    solvers count."""
    if not isinstance(solver, AbstractGradientFlowSolver):
        return {}
    counts = solver.counters(solver_state)
    rejected = rejected_work(controller, controller_state)
    return {name: value + rejected[name] if name in rejected else value for name, value in counts.items()}


def make_solver(solver, rtol: float, atol: float) -> SolverSetup:
    """The solver instance, with `rtol`, `atol` filled in, and its step-size controller.

    Tolerances are arrays: a jitted solve then takes them as inputs, not as compile-time constants,
    so a new tolerance does not recompile. A gflow solver passed as an instance gets these
    tolerances (its own are replaced), so solver and controller cannot disagree.
    """
    rtol = jnp.asarray(rtol, dtype=jnp.float64)
    atol = jnp.asarray(atol, dtype=jnp.float64)
    solver = check_solver(solver)
    if solver == SWITCHING_SOLVER:
        raise ValueError(f"{SWITCHING_SOLVER!r} is a pair of solvers chosen chunk by chunk; make each of them "
                         f"({EXPLICIT_SOLVER!r} and `stiff_solver(n_params)`) instead.")
    if isinstance(solver, str):
        solver = _from_name(solver, rtol, atol)
    if isinstance(solver, AbstractGradientFlowSolver):
        solver = solver.with_tolerances(rtol, atol)
        return SolverSetup(solver, solver.step_size_controller())
    return SolverSetup(solver, pid_controller(rtol, atol))
