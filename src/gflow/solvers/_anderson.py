"""Anderson's mixing for the BDF's Newton iteration with a kept Hessian.

Each BDF step solves $R(d) = c\\,f(y_{pred} + d) - \\psi - d = 0$ for the correction $d$ from the
predictor. With the kept Hessian $M$ (from an earlier step), each Newton correction is
$r_k = (I + cH_{kept})^{-1} R(d_k)$: the chord iteration, which contracts the error at the rate
$\\rho = \\|I - (I + cH_{kept})^{-1}(I + cH)\\|$, $H$ the Hessian at the step. When the Hessian has
turned since it was kept, $\\rho$ nears or passes 1, the iteration stalls at its cap or diverges, and
the solver renews the Hessian: on problem E of docs/performance.md one renewal (a Hessian and an
`eigh`) costs as much as 90 corrections.

Anderson's mixing (type II; Walker & Ni, *Anderson acceleration for fixed-point iterations*, SIAM J.
Numer. Anal. 49(4), 2011) steps instead along the combination of the last `m` corrections that
minimises the linearised residual: with $\\Delta D$ and $\\Delta R$ the differences of the last `m`
iterates and of their corrections, $\\gamma = \\arg\\min \\|r_k - \\Delta R\\,\\gamma\\|$ (in the step's
error weights) and the step is $r_k - (\\Delta D + \\Delta R)\\,\\gamma$. On a linear system, with a
memory as long as the iteration, the iterates are GMRES's on the system preconditioned by the kept
Hessian, each taken one chord correction further (Walker & Ni, section 4): the few directions in
which the kept Hessian is wrong are learned from the iteration's own history, at the cost of a few
vector products. Under the BDF's cap of four corrections a memory of three is the whole history.
With `m = 0` the step is the chord correction itself.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


class Memory(eqx.Module):
    """The last `m` differences of iterates and corrections (rows; the oldest is overwritten), and the
    previous iterate and correction they are taken from."""

    iterates: Float[Array, "m n"]
    corrections: Float[Array, "m n"]
    last_iterate: Float[Array, " n"]
    last_correction: Float[Array, " n"]

    @classmethod
    def empty(cls, m: int, like: Float[Array, " n"]) -> Memory:
        rows = jnp.zeros((m, like.shape[0]), like.dtype)
        return cls(rows, rows, jnp.zeros_like(like), jnp.zeros_like(like))


def mixed_step(memory: Memory, k: Int[Array, ""], d: Float[Array, " n"], r: Float[Array, " n"],
               weights: Float[Array, " n"]) -> tuple[Float[Array, " n"], Memory]:
    """Anderson's step from iterate `d` (the `k`-th, from 0) with chord correction `r`, the residual
    measured in units of `weights` (the error test's `atol + rtol |y|`), and the memory with this
    iterate in it. The first iterate's step is `r`: there is no history yet."""
    m = memory.iterates.shape[0]
    slot = (k - 1) % m
    first = k == 0
    # rows selected, then written in place (a select over the whole memory would copy it every iteration)
    iterates = memory.iterates.at[slot].set(jnp.where(first, memory.iterates[slot], d - memory.last_iterate))
    corrections = memory.corrections.at[slot].set(jnp.where(first, memory.corrections[slot],
                                                            r - memory.last_correction))
    filled = jnp.arange(m, dtype=k.dtype) < jnp.minimum(k, m)
    g = jnp.where(filled[:, None], corrections / weights, 0.0)
    gram = g @ g.T
    # unfilled rows get a unit diagonal (their coefficient is then 0); filled ones a relative floor, so
    # that nearly parallel differences give a bounded, not an infinite, combination
    floor = 1e-12 * jnp.max(jnp.diag(gram))
    gram = gram + jnp.diag(jnp.where(filled, jnp.maximum(floor, jnp.finfo(r.dtype).tiny), 1.0))
    gamma = jnp.where(filled, jnp.linalg.solve(gram, g @ (r / weights)), 0.0)
    step = jnp.where(first, r, r - gamma @ (iterates + corrections))
    return step, Memory(iterates, corrections, d, r)
