"""Choosing the ODE solver and its step-size controller.

A solver is named by a string (`"Kvaerno5"`, any adaptive diffrax solver's class name) or passed
as a diffrax solver instance. Names are what trajectory files record, so that `resume` can rebuild
the same solver.
"""

from __future__ import annotations

import diffrax
import jax.numpy as jnp

DEFAULT_SOLVER = "Kvaerno5"


def solver_name(solver) -> str:
    if solver is None:
        return DEFAULT_SOLVER
    if isinstance(solver, str):
        return solver
    return type(solver).__name__


def _solver_from_name(name: str):
    cls = getattr(diffrax, name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffrax.AbstractAdaptiveSolver)):
        raise ValueError(
            f"`solver` {name!r} is not an adaptive diffrax solver; use e.g. 'Kvaerno5', 'Kvaerno3', 'Tsit5', "
            "'Dopri8', or pass a diffrax.AbstractAdaptiveSolver instance."
        )
    return cls()


def make_solver(solver, rtol: float, atol: float):
    """The solver instance and a PID step-size controller for it."""
    if solver is None:
        solver = DEFAULT_SOLVER
    if isinstance(solver, str):
        solver = _solver_from_name(solver)
    elif not isinstance(solver, diffrax.AbstractAdaptiveSolver):
        raise ValueError(f"`solver` must be a name or a diffrax adaptive solver; got {type(solver)!r}.")
    # Tolerances as arrays: a jitted solve then takes them as inputs, not as compile-time constants,
    # so a new tolerance does not recompile. The proportional and integral gains 0.3 and 0.4 damp
    # step-size oscillation on stiff problems: on the demo flow, Kvaerno5 goes from 2024 accepted +
    # 1971 rejected steps (plain I-controller) to 1571 + 532, 2.5x faster (benchmarks/README.md).
    return solver, diffrax.PIDController(rtol=jnp.asarray(rtol, dtype=jnp.float64),
                                         atol=jnp.asarray(atol, dtype=jnp.float64), pcoeff=0.3, icoeff=0.4)
