"""The switching default's explicit method: Tsit5 that gives up once its steps are held by stability.

The switching default tests for stiffness between chunks (`_stiffness.py`). A chunk that starts
smooth and turns stiff inside it is found only when the explicit method has spent its step budget
(`EXPLICIT_MAX_STEPS`), and then the BDF solves the whole chunk again. On problem D of
docs/performance.md that budget was 5,000 Tsit5 steps, 28 s, on a stretch the BDF covers in 69 steps
and 2 s: a sixth of the run.

So the explicit method watches its own steps, as Hairer's DOPRI5 does (Hairer & Wanner, *Solving
Ordinary Differential Equations II*, section IV.2, and the code `dopri5.f`). Tsit5's last two
stages are both taken at $t + h$ (FSAL: the seventh is $f(y_{n+1})$), so

$$ h\\rho = \\frac{\\| k_7 - k_6 \\|}{\\| Y_7 - Y_6 \\|}, \\qquad k_i = h f(Y_i), $$

estimates $h$ times the curvature along the difference of the two stage values, at no extra
gradient: a lower bound on $h \\lambda_{max}$, close to it when stiffness is what separates the two
(the difference is then dominated by the fast mode). An accepted step with $h\\rho \\ge$
`STABILITY_FRACTION` $\\beta$ is **held by stability**, the test the switch applies between chunks.
After `STIFF_STEPS` such steps with no `CALM_STEPS` calm ones in a row between them (DOPRI5's counts:
15 and 6), the solve stops if, at the present step, the chunk's end lies beyond its step budget: it
would spend the budget and fail anyway, so the BDF takes the chunk now instead of after it.

Held steps alone are not reason enough: on problem B the last chunk's Tsit5 steps are held for a
stretch, and stopping there (tried first) handed a chunk Tsit5 finishes in about 180 steps (0.7 s)
to the Krylov BDF (7.3 s). The projection keeps every chunk Tsit5 would finish within its budget
explicit, up to a later change of step: where the curvature falls again, a chunk given up on could
have been finished.
"""

from __future__ import annotations

import dataclasses
import functools

import diffrax
import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._stiffness import STABILITY_FRACTION, stability_boundary

STIFF_STEPS = 15
"""Accepted steps held by stability after which the explicit method gives up (DOPRI5's count)."""
CALM_STEPS = 6
"""Consecutive accepted steps not held by stability that clear the count (DOPRI5's)."""


@functools.cache
def _watch_constants(solver_class: type) -> tuple[np.ndarray, float]:
    """The stage-difference weights and the threshold on $h\\rho$ for `solver_class`'s tableau."""
    tableau = solver_class.tableau
    return _stage_difference_weights(tableau), STABILITY_FRACTION * stability_boundary(tableau)


def _stage_difference_weights(tableau: diffrax.ButcherTableau) -> np.ndarray:
    """$w$ with $Y_s - Y_{s-1} = \\sum_j w_j k_j$ for an FSAL tableau whose last two stages are at
    $t + h$: $Y_s = y_{n+1}$ (weights $b$) and $Y_{s-1} = y_n + \\sum_j a_{s-1,j} k_j$."""
    b = np.asarray(tableau.b_sol, dtype=np.float64)
    previous = np.zeros_like(b)
    row = np.asarray(tableau.a_lower[-2], dtype=np.float64)  # the coefficients of stage s - 1
    previous[: len(row)] = row
    return b - previous


class Tsit5UntilStiff(diffrax.Tsit5):
    """`diffrax.Tsit5`, stopped with `max_steps_reached` once its steps are held by stability and,
    at the step they are held to, would not reach `horizon` within `budget` steps (module
    docstring): the switching default then solves the chunk with the BDF. Its solutions are
    Tsit5's, step for step, until it stops; without a `horizon` it never stops early."""

    horizon: Float[Array, ""] | float | None = None
    """The end of the chunk (set per chunk: `for_chunk`)."""
    budget: int | None = eqx.field(static=True, default=None)
    """The chunk's step budget (`EXPLICIT_MAX_STEPS`, or the run's `max_steps` if smaller)."""
    stiff_steps: int = eqx.field(static=True, default=STIFF_STEPS)
    calm_steps: int = eqx.field(static=True, default=CALM_STEPS)

    def for_chunk(self, horizon, budget: int) -> Tsit5UntilStiff:
        """This solver for a chunk that ends at `horizon` within `budget` steps (`fitted_to_chunk`)."""
        return dataclasses.replace(self, horizon=horizon, budget=budget)

    def init(self, terms, t0, t1, y0, args):
        # counters: steps held by stability, calm steps in a row, accepted steps
        return super().init(terms, t0, t1, y0, args), jnp.zeros(3, jnp.int32)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        inner, (stiff, calm, accepted) = solver_state
        y1, y_error, dense_info, inner, result = super().step(terms, t0, t1, y0, args, inner, made_jump)
        k = dense_info["k"]
        weights, threshold = _watch_constants(type(self))
        stage_gap = jnp.linalg.norm(jnp.asarray(weights, k.dtype) @ k)
        h_rho = jnp.linalg.norm(k[-1] - k[-2]) / jnp.where(stage_gap > 0, stage_gap, jnp.inf)
        held = h_rho >= threshold
        calm = jnp.where(held, 0, calm + 1)
        stiff = jnp.where(held, stiff + 1, jnp.where(calm >= self.calm_steps, 0, stiff))
        accepted = accepted + 1  # this state is kept only if the step is accepted
        if self.horizon is not None and self.budget is not None:
            h = jnp.asarray(t1 - t0, k.dtype)
            remaining = (jnp.asarray(self.horizon, k.dtype) - t1) / jnp.where(h > 0, h, jnp.inf)
            projected = accepted.astype(k.dtype) + remaining
            give_up = (stiff >= self.stiff_steps) & (projected > self.budget)
            result = diffrax.RESULTS.where(give_up, diffrax.RESULTS.max_steps_reached, result)
        return y1, y_error, dense_info, (inner, jnp.stack([stiff, calm, accepted])), result
