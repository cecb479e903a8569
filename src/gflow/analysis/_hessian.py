"""Second-order information of a loss: Hessian-vector products, the dense Hessian, Lanczos extremes,
and the linearisation at a point (spectrum, saddle index, escape rate).

Near a critical point $\\theta^*$ the flow is $\\dot\\delta \\approx -H \\delta$, so the component of
$\\delta = \\theta - \\theta^*$ along an eigenvector with eigenvalue $\\lambda < 0$ grows like
$e^{|\\lambda| t}$.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..common import stored_filter_jit
from ..data import AbstractDataSource
from ..losses import LossFunction, loss_function
from ..model import ParamLayout, TransformerConfig, TransformerParams


@eqx.filter_jit
def hessian_vector_product(fn: LossFunction, layout: ParamLayout, y, v):
    """$\\nabla^2 L(y)\\, v$ by forward-over-reverse differentiation. Compiled once per loss *shape*:
    the loss is an argument, so new chains, points and vectors reuse the compiled code."""
    return jax.jvp(jax.grad(lambda w: fn(layout.unflatten(w))), (y,), (v,))[1]


@stored_filter_jit
def dense_hessian(fn: LossFunction, layout: ParamLayout, y):
    """The full Hessian of the loss at the flat point `y` (compiled once per loss shape)."""
    return jax.hessian(lambda w: fn(layout.unflatten(w)))(y)


def lanczos_extremes(matvec, n: int, k: int, key) -> tuple[np.ndarray, np.ndarray]:
    """`k` Lanczos steps with full reorthogonalisation; returns Ritz values (ascending) and vectors."""
    k = min(k, n)
    Q = np.zeros((n, k))
    alpha, beta = np.zeros(k), np.zeros(k)
    q = np.array(jax.random.normal(key, (n,), dtype=jnp.float64))
    q /= np.linalg.norm(q)
    for j in range(k):
        Q[:, j] = q
        w = np.array(matvec(jnp.asarray(q)))
        alpha[j] = q @ w
        w -= Q[:, : j + 1] @ (Q[:, : j + 1].T @ w)
        w -= Q[:, : j + 1] @ (Q[:, : j + 1].T @ w)  # twice is enough (Kahan)
        beta[j] = np.linalg.norm(w)
        if beta[j] < 1e-12 * max(1.0, abs(alpha[: j + 1]).max()):
            Q, alpha, beta = Q[:, : j + 1], alpha[: j + 1], beta[: j + 1]
            break
        q = w / beta[j]
    m = len(alpha)
    Tm = np.diag(alpha) + np.diag(beta[: m - 1], 1) + np.diag(beta[: m - 1], -1)
    vals, vecs = np.linalg.eigh(Tm)
    return vals, Q @ vecs


DENSE_LIMIT = 2000
"""Up to this many parameters the Hessian is assembled densely (n Hessian-vector products, one
symmetric eigendecomposition); above it, Lanczos with Hessian-vector products finds the extremes."""


@dataclasses.dataclass(frozen=True)
class Linearization:
    """The Hessian spectrum at a point.

    - `eigenvalues`: ascending (all of them when dense; the Ritz values when Lanczos).
    - `eigenvectors`: columns matching `eigenvalues` (flat parameter vectors).
    - `saddle_index`: eigenvalues below `-tol` (`tol` = 1e-8 of the largest magnitude): negative
      directions, 0 at a local minimum.
    - `escape_rate`: $|\\lambda_{min}|$ when negative, else 0: the growth rate of the unstable component.
    - `method`: `"dense"` or `"lanczos"`.
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    saddle_index: int
    escape_rate: float
    method: str


def linearize(params: TransformerParams, spec: AbstractDataSource, config: TransformerConfig, *,
              loss: str | LossFunction = "auto", method: str = "auto", lanczos_steps: int = 80,
              key=None) -> Linearization:
    """Hessian of the population loss at `params`: spectrum, saddle index, escape rate.

    `loss` is a method name (see `gflow.loss_function`) or a `LossFunction` (for a trajectory's own
    loss: `traj.loss_function()`). `method="dense"` assembles the Hessian (exact, for up to
    ~`DENSE_LIMIT` parameters); `"lanczos"` runs `lanczos_steps` of Lanczos on Hessian-vector
    products (extreme eigenvalues, accurate to many digits after a few dozen steps); `"auto"` picks
    by size.
    """
    fn = loss if isinstance(loss, LossFunction) else loss_function(spec, config, loss)
    layout = ParamLayout.of(config, spec)
    return linearize_flat(fn, layout, layout.flatten(params), method=method, lanczos_steps=lanczos_steps, key=key)


def linearize_flat(fn: LossFunction, layout: ParamLayout, y, *, method: str = "auto", lanczos_steps: int = 80,
                   key=None) -> Linearization:
    """`linearize` at the flat parameter vector `y`."""
    if method not in ("auto", "dense", "lanczos"):
        raise ValueError(f"`method` must be 'auto', 'dense' or 'lanczos'; got {method!r}.")
    n = layout.size
    if method == "auto":
        method = "dense" if n <= DENSE_LIMIT else "lanczos"
    if method == "dense":
        H = np.asarray(dense_hessian(fn, layout, y))
        vals, vecs = np.linalg.eigh(0.5 * (H + H.T))
    else:
        key = jax.random.key(0) if key is None else key
        vals, vecs = lanczos_extremes(lambda v: hessian_vector_product(fn, layout, y, v), n, lanczos_steps, key)
    tol = 1e-8 * max(abs(vals).max(), np.finfo(float).tiny)
    return Linearization(eigenvalues=vals, eigenvectors=vecs, saddle_index=int((vals < -tol).sum()),
                         escape_rate=float(max(-vals[0], 0.0)), method=method)
