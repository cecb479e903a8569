"""The size of the last accepted step of a solve, whatever the controller (`LastStepRecorded`).

A chunk of the save grid ends with its controller's state; diffrax's controllers do not keep the
step they took, and that step is the signal a stiffness test needs: an explicit method on a stiff
stretch takes steps near its stability limit $h \\lambda_{max} \\approx$ const, however loose the
tolerances. The wrapper runs the controller it holds unchanged (same decisions, same numbers) and
carries the last accepted step and the step it proposed next beside its state;
`SaveAt(controller_state=True)` hands them back.
"""

from __future__ import annotations

import diffrax
import jax.numpy as jnp
from jaxtyping import Array, Float


def _record(inner, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state):
    state, last, proposed, t_end = controller_state
    keep, t_next, t_next_next, made_jump, state, result = inner.adapt_step_size(
        t0, t1, y0, y1_candidate, args, y_error, error_order, state)
    taken = jnp.where(keep, t1 - t0, last)
    whole = keep & (t_next_next < t_end)  # a proposal not cut short to land on the end
    return (keep, t_next, t_next_next, made_jump,
            (state, taken, jnp.where(whole, t_next_next - t_next, proposed), t_end), result)


def _init(inner, terms, t0, t1, y0, dt0, args, func, error_order):
    t_next, state = inner.init(terms, t0, t1, y0, dt0, args, func, error_order)
    zero = jnp.zeros((), dtype=jnp.result_type(t0, t_next))
    return t_next, (state, zero + (t_next - t0), zero + (t_next - t0), zero + t1)


class _LastStepOfAny(diffrax.AbstractStepSizeController):
    inner: diffrax.AbstractStepSizeController

    def wrap(self, direction):
        return _LastStepOfAny(self.inner.wrap(direction))

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        return _init(self.inner, terms, t0, t1, y0, dt0, args, func, error_order)

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state):
        return _record(self.inner, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state)


class _LastStepOfAdaptive(diffrax.AbstractAdaptiveStepSizeController):
    inner: diffrax.AbstractAdaptiveStepSizeController

    @property
    def rtol(self):  # an implicit diffrax solver takes its Newton tolerances from these
        return self.inner.rtol

    @property
    def atol(self):
        return self.inner.atol

    @property
    def norm(self):
        return self.inner.norm

    def wrap(self, direction):
        return _LastStepOfAdaptive(self.inner.wrap(direction))

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        return _init(self.inner, terms, t0, t1, y0, dt0, args, func, error_order)

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state):
        return _record(self.inner, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state)


def last_step_recorded(controller: diffrax.AbstractStepSizeController) -> diffrax.AbstractStepSizeController:
    """`controller`, unchanged in its decisions, also carrying its last accepted step (see `last_step`)."""
    if isinstance(controller, diffrax.AbstractAdaptiveStepSizeController):
        return _LastStepOfAdaptive(controller)
    return _LastStepOfAny(controller)


def last_step(controller_state) -> Float[Array, ""]:
    """The last accepted step of a solve, from the final state of a `last_step_recorded` controller."""
    return controller_state[1]


def proposed_step(controller_state) -> Float[Array, ""]:
    """The last step the controller proposed that was not cut short to land on the solve's end (the
    last accepted steps may be): what it wanted to take near the end, so it shows a step limit, such
    as an explicit method's stability limit, there."""
    return controller_state[2]


def is_last_step_recorded(controller) -> bool:
    return isinstance(controller, _LastStepOfAny | _LastStepOfAdaptive)


