"""SUNDIALS' CVODE as a contender (scikit-sundae, the `bench` extra), given gflow's jitted JAX functions.

Three ways a user who knows CVODE would set it up on a gradient flow:

- `"dense"`: BDF with the dense direct linear solver and the exact Jacobian (the negative Hessian, by
  `jax.jacfwd` of the gradient) whenever CVODE asks for one (CVODE keeps it across steps and renews it
  on Newton convergence failures or every 20 steps, its own policy);
- `"dense-dq"`: the same without the Jacobian, which CVODE then forms by difference quotients (one
  gradient per column);
- `"gmres"`: BDF with matrix-free GMRES (`krylov_dim` 20, no preconditioner) and the exact
  Jacobian-vector product (`jax.jvp` of the gradient);
- `"gmres-dq"`: the same, with CVODE's own difference-quotient product instead (one gradient each,
  SUNDIALS' default when no product is given): cheaper than `jax.jvp`'s (a gradient costs about 0.4
  of an exact product at problem D's size) and what gflow's Krylov BDF does too;
- `"adams"`: Adams-Moulton (orders 1-12), meant for non-stiff stretches, its Newton systems also by
  GMRES with the exact product.

Times are wall seconds of `CVODE.solve` over the whole save grid (the JAX functions compiled before).
scikit-sundae reports right-hand-side evaluations (`nfev`) and Jacobian evaluations (`njev`), not
steps; `solve` also counts the calls of each JAX function itself (`gradients`, `products`,
`jacobians`), which is the work to compare with gflow's counters.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("dense", "dense-dq", "gmres", "gmres-dq", "adams")


def available() -> bool:
    try:
        import sksundae  # noqa: F401
    except ImportError:
        return False
    return True


def functions(field):
    """Jitted host functions of the gradient field: `f(y)`, `jac(y)`, `jvp(y, v)`."""
    def vf(y):
        return field(0.0, y, None)

    f = jax.jit(vf)
    jac = jax.jit(jax.jacfwd(vf))
    jvp = jax.jit(lambda y, v: jax.jvp(vf, (y,), (v,))[1])
    return f, jac, jvp


def solve(kind: str, fns, y0: np.ndarray, grid: np.ndarray, rtol: float, atol: float,
          krylov_dim: int = 20, max_num_steps: int = 10**6):
    """CVODE of `kind` over `grid` from `y0`: `(states (len(grid), n) or None, wall, counts, message)`;
    `counts` has CVODE's `nfev`, `njev` and the calls of each JAX function."""
    from sksundae.cvode import CVODE, CVODEJacTimes

    f, jac, jvp = fns
    n = y0.size
    # warm the jitted functions on this shape, so that compilation is not timed
    y = jnp.asarray(y0)
    jax.block_until_ready(f(y))
    jax.block_until_ready(jvp(y, y))
    if kind == "dense":
        jax.block_until_ready(jac(y))

    calls = {"gradients": 0, "products": 0, "jacobians": 0}

    def rhs(t, y, yp):
        calls["gradients"] += 1
        yp[:] = np.asarray(f(jnp.asarray(y)))

    options = dict(method="Adams" if kind == "adams" else "BDF", rtol=rtol, atol=atol, max_num_steps=max_num_steps)
    if kind == "dense":
        def jacobian(t, y, yp, JJ):
            calls["jacobians"] += 1
            JJ[:, :] = np.asarray(jac(jnp.asarray(y)))

        options.update(linsolver="dense", jacfn=jacobian)
    elif kind == "dense-dq":  # no `jacfn`: CVODE's difference-quotient Jacobian, n gradients a column each
        options.update(linsolver="dense")
    elif kind == "gmres-dq":  # no `jactimes`: SUNDIALS' difference quotients of `rhs` (counted as gradients)
        options.update(linsolver="gmres", krylov_dim=min(krylov_dim, n))
    else:
        def product(t, y, yp, v, Jv):
            calls["products"] += 1
            Jv[:] = np.asarray(jvp(jnp.asarray(y), jnp.asarray(v)))

        options.update(linsolver="gmres", krylov_dim=min(krylov_dim, n), jactimes=CVODEJacTimes(None, product))
    tic = time.perf_counter()
    sol = CVODE(rhs, **options).solve(np.asarray(grid, dtype=np.float64), np.asarray(y0, dtype=np.float64))
    wall = time.perf_counter() - tic
    counts = {"nfev": int(sol.nfev), "njev": int(sol.njev)} | calls
    if kind == "gmres-dq":  # CVODE's `nfev` leaves out the linear solver's difference quotients: those are the rest
        counts["products"] = calls["gradients"] - counts["nfev"]
    ok = bool(sol.success) and len(sol.t) == len(grid)
    return (np.asarray(sol.y) if ok else None), wall, counts, str(sol.message)
