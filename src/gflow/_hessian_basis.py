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
    curvature, basis = jnp.linalg.eigh(-0.5 * (jacobian + jacobian.T))
    return basis, curvature
