"""Critical points of the loss, located from the flow: a Newton solve of $\\nabla L = 0$.

A plateau of gradient flow is the passage near a saddle $\\theta^*$. The state on the plateau is not
the saddle: it still carries the unstable component that will end the plateau and whatever is left
of the stable ones. Newton's method on the gradient converges to a critical point near the
state whatever its index (it solves $\\nabla L = 0$, it does not minimise), so it locates the saddle
from any state of the plateau. The Hessian is singular at the saddles of this model (the
symmetries of the parameters, and attention that is flat at small scale), so each step is the
least-squares step on the eigenvalues above round-off (and above a slow rate, `locate_critical_point`);
a step that would raise the merit, the gradient's norm on the directions the step solved for, is
halved.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

from ..common import stored_filter_jit
from ..losses import LossFunction
from ..model import ParamLayout
from ._hessian import DENSE_LIMIT, dense_hessian

PSEUDO_INVERSE = 1e-10
"""Eigenvalues below this fraction of the largest are treated as zero by the Newton step (flat
directions: symmetries, and attention at small scale); above it the step inverts them."""

CONVERGED = 1e-6
"""Newton has converged when the gradient is this fraction of its size at the starting state (six
orders: deep in Newton's quadratic regime, where the next step is round-off), or when its step is
round-off of the point itself."""


ROUNDOFF_STEP = 1e-8
"""A Newton step this small relative to the point (the square root of float64's epsilon: the
accuracy to which a gradient's zero locates a point) that no longer lowers the gradient has
converged."""


@dataclasses.dataclass(frozen=True, eq=False)
class CriticalPoint:
    """A point where the gradient vanishes in the directions that are not slow: `y` (flat), its loss,
    the gradient there (`gradient`: what is left is along the slow directions), the norm of the
    solved part of the gradient at the end and at the start, the Hessian's eigenvalues and
    eigenvectors there (ascending), the rate below which directions count as slow, and whether
    Newton converged (`converged`: the solved gradient fell to `CONVERGED` of its size at the
    starting state, or the step to round-off)."""

    y: np.ndarray
    loss: float
    gradient: np.ndarray
    gradient_norm: float
    start_gradient_norm: float
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    slowest_rate: float
    iterations: int
    converged: bool
    spectra_seen: tuple[np.ndarray, ...] = ()
    """The eigenvalues at every point where Newton chose its directions (the start, then each step's end)."""

    def solved(self) -> np.ndarray:
        """Which eigen-directions Newton solved for (not slow, not round-off)."""
        return _solved(self.eigenvalues, self.slowest_rate)

    def at_slowest_rate(self, slowest_rate: float) -> CriticalPoint | None:
        """This search as it would have gone from the same start with another `slowest_rate`, when
        it would have been the same search: every spectrum it saw splits into solved and slow
        directions alike at both rates (the rate enters Newton only through that split), so each
        step, merit and stop is the same. None otherwise (the search must be run)."""
        if not self.spectra_seen or any(np.any(_solved(v, slowest_rate) != _solved(v, self.slowest_rate))
                                        for v in self.spectra_seen):
            return None
        return dataclasses.replace(self, slowest_rate=float(slowest_rate))


def _solved(vals: np.ndarray, slowest_rate: float) -> np.ndarray:
    return np.abs(vals) > max(slowest_rate, PSEUDO_INVERSE * max(np.abs(vals).max(), np.finfo(float).tiny))


@stored_filter_jit
def _value_and_grad(fn: LossFunction, layout: ParamLayout, y):
    return jax.value_and_grad(lambda w: fn(layout.unflatten(w)))(y)


LINE_SEARCH_HALVINGS = 30
"""A Newton step is halved at most this many times (to a billionth of itself) before Newton stops."""


@stored_filter_jit
def _halve_until_lower(fn: LossFunction, layout: ParamLayout, y, step, vecs, keep, norm):
    """(k, gradient at y + step / 2**k) for the fewest halvings k whose trial point lowers the merit
    (the gradient's norm on the eigenvectors `vecs[:, keep]`) below `norm`; k = `LINE_SEARCH_HALVINGS`
    when none does. One compiled loop: a demo's Newton searches try about ten points a step, and a
    call each cost more than the gradients themselves."""
    grad = jax.grad(lambda w: fn(layout.unflatten(w)))

    def merit(g):
        return jnp.linalg.norm(jnp.where(keep, vecs.T @ g, 0.0))

    def trial(k):
        return grad(y + jnp.ldexp(step, -k))  # exact halvings, as the caller's 0.5 ** k * step

    def higher(state):
        k, g = state
        return (k < LINE_SEARCH_HALVINGS) & (merit(g) >= norm)

    def halve(state):
        k, _ = state
        return k + 1, trial(k + 1)

    zero = jnp.zeros((), jnp.int32)
    k, g = jax.lax.while_loop(higher, halve, (zero, trial(zero)))
    return k, g


def _spectrum(fn: LossFunction, layout: ParamLayout, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    H = np.asarray(dense_hessian(fn, layout, y))  # (numpy in: jnp.asarray costs 80 us a call here)
    return np.linalg.eigh(0.5 * (H + H.T))


def locate_critical_point(fn: LossFunction, layout: ParamLayout, y0: Float[np.ndarray, " n"], *,
                          slowest_rate: float = 0.0, max_iterations: int = 40) -> CriticalPoint:
    """Newton's method on $\\nabla L = 0$ from the flat state `y0` (module docstring), solving only
    along the eigen-directions whose curvature exceeds `slowest_rate` in size: slower directions
    barely move on the time scale of interest, and inverting their tiny curvatures would send the
    step far along a nearly flat valley. `slowest_rate = 0`: every direction above round-off.

    Dense (it factors the Hessian): up to `DENSE_LIMIT` parameters."""
    y = np.asarray(y0, dtype=np.float64)
    if y.ndim != 1 or y.shape[0] != layout.size:
        raise ValueError(f"`y0` must be a flat parameter vector of length {layout.size}; got shape {y.shape}.")
    if layout.size > DENSE_LIMIT:
        raise ValueError(f"locating a saddle factors the Hessian: at most {DENSE_LIMIT} parameters; this model has "
                         f"{layout.size}. Use a smaller model (or `linearize(..., method='lanczos')` for the spectrum "
                         f"at a saved state).")
    if not (np.isfinite(slowest_rate) and slowest_rate >= 0):
        raise ValueError(f"`slowest_rate` must be a finite number >= 0; got {slowest_rate!r}.")
    _, g = _value_and_grad(fn, layout, y)
    g = np.asarray(g)
    vals, vecs = _spectrum(fn, layout, y)
    seen = [vals]

    def solved_norm(g, vals, vecs) -> float:
        return float(np.linalg.norm(vecs[:, _solved(vals, slowest_rate)].T @ g))

    start = norm = solved_norm(g, vals, vecs)
    iterations, converged = 0, start == 0.0
    scale = max(float(np.linalg.norm(y)), np.finfo(float).tiny)
    while not converged and iterations < max_iterations:
        keep = _solved(vals, slowest_rate)
        step = -(vecs[:, keep] @ ((vecs[:, keep].T @ g) / vals[keep]))
        iterations += 1
        size = float(np.linalg.norm(step))
        if size <= 1e-15 * scale:
            converged = True
            break
        # Halve a step that would raise the merit: the gradient's norm along the directions this step
        # solved for, at the current point and at the trial point alike (one merit function per
        # step, as a line search needs; a trial costs a gradient, not a Hessian and its eigh).
        halvings, g_new = _halve_until_lower(fn, layout, y, step, vecs, keep, np.asarray(norm))
        if int(halvings) == LINE_SEARCH_HALVINGS:
            # no step lowers the gradient: float64 round-off, when the step is round-off of the point
            converged = size <= ROUNDOFF_STEP * scale
            break
        step, g_new = 0.5 ** int(halvings) * step, np.asarray(g_new)
        vals_new, vecs_new = _spectrum(fn, layout, y + step)
        seen.append(vals_new)
        y, g, norm, vals, vecs = y + step, g_new, solved_norm(g_new, vals_new, vecs_new), vals_new, vecs_new
        converged = norm <= 1e-3 * CONVERGED * start  # go on a little past CONVERGED: it is cheap here
    loss, _ = _value_and_grad(fn, layout, y)
    return CriticalPoint(y=y, loss=float(loss), gradient=g, gradient_norm=norm, start_gradient_norm=start,
                         eigenvalues=vals, eigenvectors=vecs, slowest_rate=float(slowest_rate), iterations=iterations,
                         converged=bool(converged or norm <= CONVERGED * start), spectra_seen=tuple(seen))
