"""Steps chosen by the solver itself: `StepDecision` and the controller that carries it out.

diffrax's step-size controllers choose a step from one error estimate of a fixed order; a
variable-order method (`GradientFlowBDF`) chooses step size and order together. Such a solver
returns a `StepDecision` where other solvers return an error estimate, and `SolverChosenSteps` is
the controller that obeys it. Pairing either with anything else fails at trace time, with a message
saying what to pair it with.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

PAIRING = ("GradientFlowBDF chooses its own step sizes and orders and returns a StepDecision, not an error "
           "estimate: run it under gflow.solvers.SolverChosenSteps(rtol, atol) (its step_size_controller(); "
           "gflow.simulate does this), not under PIDController or another error-based controller.")


def rms(x: Float[Array, " n"]) -> Float[Array, ""]:
    return jnp.sqrt(jnp.mean(x**2))


WORK_COUNTERS = ("num_hessian_evaluations", "num_gradient_evaluations", "num_hessian_vector_products")
"""The work a `StepDecision` reports, in this order (the names of the solvers' `counters`)."""


class StepDecision(eqx.Module):
    """A solver's verdict on its step: `accept` (1.0 or 0.0), the size of the next step, and the work
    the attempt did (`WORK_COUNTERS`; floats, since diffrax maps every leaf of an error estimate
    through `jnp.where(isnan(x), inf, x)`). The work matters on a rejection: diffrax then restores
    the solver state from before the attempt, counters included, so the controller keeps the count."""

    accept: Float[Array, ""]
    next_step: Float[Array, ""]
    work: Float[Array, " 3"]

    def _not_an_error_estimate(self, *args):
        raise TypeError(PAIRING)

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _not_an_error_estimate
    __truediv__ = __rtruediv__ = __pow__ = __abs__ = __neg__ = _not_an_error_estimate


class SolverChosenSteps(diffrax.AbstractStepSizeController):
    """Carries out the accept/reject decision and next step size that the solver reports.

    The first step is scipy's `select_initial_step` for order 1 (Hairer, Nørsett & Wanner, *Solving
    ODEs I*, II.4). A step size below 10 ulps of $t$ ends the solve with diffrax's `dt_min_reached`.
    Its state is the work of the rejected attempts (`rejected_work`), which the solver state loses.
    """

    rtol: Float[Array, ""] | float
    atol: Float[Array, ""] | float

    def wrap(self, direction):
        return self

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        rejected = jnp.zeros(len(WORK_COUNTERS), jnp.int32)
        if dt0 is not None:
            return t0 + dt0, rejected
        scale = self.atol + jnp.abs(y0) * self.rtol
        f0 = func(terms, t0, y0, args)
        d0, d1 = rms(y0 / scale), rms(f0 / scale)
        h0 = jnp.minimum(jnp.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1), t1 - t0)
        d2 = rms((func(terms, t0 + h0, y0 + h0 * f0, args) - f0) / scale) / h0
        h1 = jnp.where((d1 <= 1e-15) & (d2 <= 1e-15), jnp.maximum(1e-6, h0 * 1e-3),
                       (0.01 / jnp.maximum(d1, d2)) ** 0.5)
        return t0 + jnp.minimum(jnp.minimum(100 * h0, h1), t1 - t0), rejected

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state):
        if not isinstance(y_error, StepDecision):
            raise TypeError("SolverChosenSteps carries out the StepDecision of a solver that chooses its own steps "
                            f"(GradientFlowBDF); this solver returned an error estimate ({type(y_error).__name__}): "
                            "run it under diffrax.PIDController instead.")
        accept = y_error.accept > 0.5
        start = jnp.where(accept, t1, t0)
        too_small = y_error.next_step < 10 * jnp.abs(jnp.nextafter(start, jnp.inf) - start)
        result = diffrax.RESULTS.where(too_small, diffrax.RESULTS.dt_min_reached, diffrax.RESULTS.successful)
        rejected = controller_state + jnp.where(accept, 0.0, y_error.work).astype(controller_state.dtype)
        return accept, start, start + y_error.next_step, False, rejected, result


def rejected_work(controller: diffrax.AbstractStepSizeController, controller_state) -> dict:
    """The work of a solve's rejected attempts, by `WORK_COUNTERS` name, from the final state of its
    controller (empty for a controller other than `SolverChosenSteps`)."""
    if not isinstance(controller, SolverChosenSteps):
        return {}
    return dict(zip(WORK_COUNTERS, controller_state, strict=True))
