"""The Hessian of a gradient flow in its eigenbasis: what gflow's stiff solvers keep across steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def hessian_eigenbasis(terms, t, y: Float[Array, " n"], args) -> tuple[Float[Array, "n n"], Float[Array, " n"]]:
    """Eigenvectors (as columns) and eigenvalues of $H = -J$ at `y`, for the flow $\\dot y = -\\nabla L$.

    $J$ is the Jacobian of the vector field by forward-over-reverse differentiation; it is
    symmetrised before `eigh`, which removes the round-off asymmetry of the two halves.
    """
    jacobian = jax.jacfwd(lambda x: terms.vf(t, x, args))(y)
    # 0.5 (J + J^T) is exactly symmetric in floating point: eigh's own symmetrisation would repeat it
    basis, curvature = jax.lax.linalg.eigh(-0.5 * (jacobian + jacobian.T), symmetrize_input=False)
    return basis, curvature


GROWTH_PER_STEP = 0.5
"""Steps are kept to $h \\mu \\le$ this along every unstable direction (rate $\\mu = -\\lambda$) of the kept
Hessian: there, BDF and Rosenbrock steps amplify the unstable component by more than one, as the
exact flow does. Far beyond it ($h\\mu > 2$ for BDF1) an implicit step *damps* an unstable component,
and a saddle the exact flow leaves looks stable."""

NEGLIGIBLE_GROWTH = 1e-2
"""Unstable directions with $\\mu t$ below this are left to the usual error test: by time $t$ they
have not grown measurably."""

ROUNDOFF_DEVIATIONS = 1e3
"""Deviations along an unstable direction below this many ulps of the state's largest entry are
round-off, not physics: the relative error control of `unstable_error_norm` stops there."""


def unstable_step_limit(curvature: Float[Array, " n"]) -> Float[Array, ""]:
    """The largest step allowed by `GROWTH_PER_STEP` along the kept Hessian's unstable directions
    (infinite at a minimum)."""
    rate = jnp.max(-curvature)
    return jnp.where(rate > 0, GROWTH_PER_STEP / jnp.where(rate > 0, rate, 1.0), jnp.inf)


def unstable_error_norm(error_in_basis: Float[Array, " n"], curvature: Float[Array, " n"],
                        y_in_basis: Float[Array, " n"], y_max: Float[Array, ""], t, rtol) -> Float[Array, ""]:
    """A step's error along the unstable directions of the kept Hessian, relative to their own size.

    The usual error test weighs every component against `atol + rtol |y|`, so it cannot see a
    component of $y$ far below `atol`, and an implicit method then takes steps that damp it. That is
    exactly what must not happen near a saddle of a symmetric problem: the deviation from the
    invariant (symmetric) subspace lies along the saddle's unstable eigenvector $q$, orthogonal to
    that subspace, so $|q^\\top y|$ *is* the deviation, however small, and it grows like $e^{\\mu t}$.
    This norm is the largest ratio $|q^\\top e| / (\\text{rtol} \\cdot \\max(|q^\\top y|, \\text{round-off}))$ over
    the unstable directions that can grow by time $t$ ($\\mu t \\ge$ `NEGLIGIBLE_GROWTH`): below 1, the
    step follows every such deviation to relative accuracy `rtol`. Where $q^\\top y$ is large (a saddle
    away from any symmetry), the ratio is the usual relative test and `unstable_step_limit` alone
    keeps the growth from being damped (docs/flow.md).

    **Arguments:** `error_in_basis` and `y_in_basis`, the error estimate (or a Newton correction) and
    the state in the kept eigenbasis ($Q^\\top e$, $Q^\\top y$); `curvature`, the kept eigenvalues;
    `y_max`, the state's largest entry (for the round-off floor); `t`; `rtol`.
    """
    unstable = -curvature * jnp.abs(t) >= NEGLIGIBLE_GROWTH
    floor = ROUNDOFF_DEVIATIONS * jnp.finfo(y_in_basis.dtype).eps * y_max
    # At an exact stationary point (every weight 0: a symmetric or zero initialisation) both the state
    # and the error are exactly 0 along every direction; the smallest normal number keeps 0 / 0 from
    # rejecting every step there (it is below any deviation the flow could ever grow from; a
    # subnormal floor would not do: XLA flushes subnormals to zero on CPUs).
    denominator = jnp.maximum(rtol * jnp.maximum(jnp.abs(y_in_basis), floor), jnp.finfo(y_in_basis.dtype).tiny)
    ratio = jnp.abs(error_in_basis) / denominator
    return jnp.max(jnp.where(unstable, ratio, 0.0))
