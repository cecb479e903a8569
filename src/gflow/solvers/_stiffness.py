"""When is a gradient flow stiff? The signals the switching default reads between chunks.

An explicit Runge-Kutta method applied to $\\dot y = -H y$ is stable only while $h\\lambda$ stays in
its stability region for every eigenvalue $\\lambda$ of the Hessian $H$; on the negative real axis
that region is $[-\\beta, 0]$ (`stability_boundary`, computed from the method's own tableau: 3.5
for Tsit5). A stretch of the flow is **stiff** when the explicit method's step is held there,
$h\\,\\rho \\approx \\beta$ with $\\rho$ the largest curvature (`largest_curvature`), rather than by its
error estimate: its steps are then set by a mode that has long decayed, and an implicit method,
whose step is limited by accuracy alone, takes far fewer.

Both tests are ratios of the flow's own scales, so they mean the same on any model and any loss:

- `stability_limited`: explicit steps with $h\\rho \\geq \\beta / 2$. A PID controller held by
  stability oscillates in $[\\beta/2, \\beta]$ (a step beyond $\\beta$ grows the fast mode, its error
  estimate rises and the step is cut by about half); an accuracy-limited step on a smooth stretch
  sits far below it.
- `explicit_cheaper`: an implicit method is worth it only while its steps are longer than the
  explicit method's stability limit $\\beta/\\rho$ by more than the ratio of their costs per step.
  The implicit step's cost is counted from its own work counters (gradients, Hessian-vector
  products, dense Hessians) in gradient evaluations, by the solver itself (`work_in_gradients`);
  the explicit one is its stages per step.
"""

from __future__ import annotations

import functools

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._krylov import lanczos_tridiagonal

CURVATURE_STEPS = 12
"""Lanczos steps for the largest curvature: the extreme Ritz value converges first (12 steps give it
to a few percent on the problems of docs/performance.md, and it is only compared with factors of 2)."""

STABILITY_FRACTION = 0.5
"""`stability_limited` when $h\\rho \\geq$ this times $\\beta$ (module docstring)."""

SAFETY = 2.0
"""The explicit method takes over only when it is estimated this many times cheaper: its estimate
counts stability-limited steps, a lower bound (accuracy may ask for shorter ones)."""


def stability_boundary(tableau: diffrax.ButcherTableau) -> float:
    """The largest $\\beta$ with $|R(-x)| \\leq 1$ for all $x \\in [0, \\beta]$, $R(z) = 1 + z\\,b^\\top(I -
    zA)^{-1}\\mathbf 1$ the stability function of the explicit tableau (found on a grid of 1e-4).

    For an explicit method $A$ is strictly lower triangular, so $R$ is the polynomial
    $1 + \\sum_{k=1}^{s} z^k\\, b^\\top A^{k-1} \\mathbf 1$, evaluated on the whole grid at once. Computed
    once per tableau (by its coefficients): the grid's 200,000 points took 5.6 ms, a quarter of a short
    non-stiff run's time (problem I of `benchmarks/scale.py`: 23 ms against Tsit5's 14 ms)."""
    rows = tuple(tuple(float(x) for x in np.asarray(row)) for row in tableau.a_lower)
    return _boundary_of(rows, tuple(float(x) for x in np.asarray(tableau.b_sol)))


@functools.cache
def _boundary_of(a_lower: tuple[tuple[float, ...], ...], b_sol: tuple[float, ...]) -> float:
    s = len(b_sol)
    A = np.zeros((s, s))
    for i, row in enumerate(a_lower):
        A[i + 1, : len(row)] = row
    b = np.asarray(b_sol, dtype=np.float64)
    coefficients, v = [1.0], np.ones(s)
    for _ in range(s):
        coefficients.append(float(b @ v))
        v = A @ v
    xs = np.arange(1, 200_001) * 1e-4
    growth = np.abs(np.polynomial.polynomial.polyval(-xs, coefficients))
    unstable = np.nonzero(growth > 1 + 1e-12)[0]
    return float(xs[unstable[0] - 1]) if unstable.size else float(xs[-1])


def largest_curvature(field, y: Float[Array, " n"]) -> Float[Array, ""]:
    """$\\max |\\lambda(H)|$ at `y` for the gradient field `field` ($-\\nabla L$), from
    `CURVATURE_STEPS` Lanczos steps (Hessian-vector products, forward-over-reverse) with full
    reorthogonalisation, started from a fixed vector: deterministic, so a resumed run decides as the
    uninterrupted one did. A lower bound that converges quickly from below."""
    def product(v):
        return -jax.jvp(lambda x: field(0.0, x, None), (y,), (v,))[1]

    _, T, _ = lanczos_tridiagonal(product, y.shape[0], CURVATURE_STEPS, y.dtype)
    return jnp.max(jnp.abs(jnp.linalg.eigvalsh(T)))


def stability_limited(step: float, curvature: float, boundary: float) -> bool:
    """The explicit method's last step was held by stability: $h\\rho \\geq$ `STABILITY_FRACTION` $\\beta$."""
    return bool(step * curvature >= STABILITY_FRACTION * boundary)


def implicit_step_cost(work: dict[str, int], steps: int, solver, n_params: int) -> float:
    """The implicit method's cost per attempted step in gradient evaluations, from its counters `work`
    over a chunk of `steps` attempted steps, as the BDF `solver` counts its own work
    (`work_in_gradients`: a dense Hessian as `n_params` exact products, a Krylov solve's difference
    products as one gradient each)."""
    return solver.work_in_gradients(work, n_params) / max(steps, 1)


def explicit_cheaper(step: float, curvature: float, boundary: float, implicit_cost: float,
                     explicit_cost: float) -> bool:
    """The explicit method would cover the implicit method's last step `step` at `SAFETY` times less
    cost: `step` / ($\\beta/\\rho$) stability-limited explicit steps of `explicit_cost` each, against one
    implicit step of `implicit_cost`."""
    explicit_steps = step * curvature / boundary
    return bool(SAFETY * explicit_steps * explicit_cost <= implicit_cost)
