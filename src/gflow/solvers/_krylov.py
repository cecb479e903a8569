"""A matrix-free variable-order BDF solver for large gradient flows: Newton-Krylov with Hessian-vector
products, preconditioned by a few kept eigenpairs of the Hessian.

`GradientFlowBDF` keeps the whole Hessian as $Q\\,\\mathrm{diag}(\\lambda)\\,Q^\\top$: n Hessian-vector
products and an n^3 `eigh` per renewal, n^2 floats of memory. Above a few thousand parameters that
is the whole cost. But the stiffness of a gradient flow lives in a few directions (the largest
eigenvalues of H), and the saddles' dynamics in a few more (the most negative ones). This solver
keeps the same steps, orders and error control (it is a subclass that only replaces the linear
algebra) and:

- **keeps** the extreme eigenpairs of H from `LANCZOS_STEPS` steps of Lanczos with full
  reorthogonalisation, started from a fixed vector; a Ritz pair is kept only when its residual
  estimate $|\\beta_m s_{mi}|$ is below `RITZ_TOLERANCE` of the largest Ritz value (unconverged
  interior ones would be wrong eigenvalues, and a spurious negative one would be taken for an
  unstable direction). At most `KEPT_PAIRS` are kept, the unstable ones first, then the stiffest. As
  in the dense solver, they are renewed when Newton's iteration fails (or when stale ones limit the
  step, `STALE_LIMIT_STEPS`).
- **solves** each Newton system $(I + cH)\\,x = r$ by CG, or GMRES where $I + cH$ may be indefinite
  (lineax), with Hessian-vector products, to `KRYLOV_RTOL` of the
  right-hand side *entry by entry* (lineax's test: the 2-norm of $r_{res,i} / (\\text{rtol}\\,|r_i|)$
  at most 1, and likewise for the last update against $x$; stricter than a relative 2-norm, so
  most solves run to the cap of `KRYLOV_MAX_PRODUCTS`), left-preconditioned by
  $I + V(\\mathrm{diag}(1/|1 + c\\theta|) - I)V^\\top$: exact on the kept directions (where the
  stiffness is), the identity elsewhere. GMRES and not CG: near a saddle $I + cH$ is indefinite
  when $c|\\lambda_{min}| > 1$.
- **products**: in the Newton solves, forward differences of the gradient at the step's prediction
  (`difference_products`; one gradient each: 0.20 ms at problem D's size against 0.48 ms for an exact
  forward-over-reverse product; relative error about 3e-8, below the solves' 1e-6). Newton's iteration
  evaluates its residuals with the exact gradient, so a product's error changes how fast the
  corrections converge, not the point they converge to. Lanczos keeps the exact products: its
  eigenvalues set the unstable rates and step limits, and 3e-8 of the largest eigenvalue is not
  small against an unstable one (on problem C, 3e-8 x 260 is 0.6% of -1.3e-3). A solve also takes
  exact products when y's component along a kept unstable direction is smaller than the difference
  step $\\sqrt{\\epsilon_{mach}}(1 + \\|y\\|)$: the step would then move y along that direction by more
  than the deviation an escape grows from. Without that rule a degenerate saddle of tests/test_saddle.py
  (pi = (0.4, 0.3, 0.15, 0.15), deviation 1e-10) escaped 0.29% early (exact products: 0.19%; the bound is
  0.3%), with it 0.09%; it costs problems C and F 5-7% (24 of C's 5,181 solves take exact products).
- **controls** the error along the kept unstable directions exactly as the dense solver does
  (`unstable_error_norm`, `unstable_step_limit`), so saddles are left as the exact flow leaves them.

Memory is O(n LANCZOS_STEPS) during a renewal and O(n KEPT_PAIRS) between them; a step costs the dense
solver's gradients plus the Krylov products, and a pass over the kept pairs per product.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float, Int

from ._bdf import EXACT_PRODUCT_COST, NEWTON_DIVERGENCE, NEWTON_MAXITER, NEWTON_TOLERANCE, GradientFlowBDF

LANCZOS_STEPS = 40
"""Lanczos steps per renewal of the kept eigenpairs (each one Hessian-vector product)."""

REORTHOGONALISATION_BLOCK = 8
"""Lanczos step j reorthogonalises against the first multiple of this many rows that holds rows 0..j
(not all `LANCZOS_STEPS`, most of them still zero): half the passes over the basis on average."""

KEPT_PAIRS = 24
"""Rows for the kept pairs (the converged Ritz pairs of `LANCZOS_STEPS` steps, unstable first):
every solve and error test reads those that hold a pair (`KEPT_WIDTHS`). Of 40 Lanczos steps 2-5
pairs converged at most of 41 states saved along problem D's run, and 17-24 at 178 of the 183
renewals of its stiff chunk."""

RITZ_TOLERANCE = 1e-3
"""A Ritz pair is kept when its residual norm is below this fraction of the largest |Ritz value|."""

KRYLOV_RTOL = 1e-6
"""The Krylov solve stops when the residual is this small relative to the right-hand side, entry by entry
(lineax's test, module docstring). A relative 2-norm test instead (a third of problem C's solves
reach it within the cap) took 10% off C, but moved the escape of the hardest saddle-fidelity case
(pi = (0.4, 0.3, 0.15, 0.15), deviation 1e-13) from -1.1% to -1.6% of the explicit reference's
(measured with 40 kept columns, before `KEPT_PAIRS`)."""

KRYLOV_MAX_PRODUCTS = 10
"""...or after this many Hessian-vector products. Newton's iteration absorbs an inexact linear solve
(it is an iteration on the nonlinear system anyway), and when it fails to converge the kept
eigenpairs are renewed, which is what makes the next solves fast. Measured on problem C
(docs/performance.md): a cap of 400 spent 540,000 products (many solves ran to the cap), 60 spent
166,000, 10 spent 54,000 with 83 renewals, at the same accuracy; 5 took more steps."""
KEPT_WIDTHS = (2, 4, 8, 16)
"""The widths a product with the kept pairs reads: they fill a prefix of the `KEPT_PAIRS` rows (the
rest are zero), and each product streams only the smallest of these widths (or all the rows) that
holds the prefix. At 36,864 parameters the 24 rows are 7 MB, and a product with all of them costs
0.37 ms against 0.12 ms for 4 (a Hessian-vector product: 0.61 ms). How many converge varies: 4-5
at 5 of the 183 renewals of problem D's stiff chunk, 17-24 at the rest."""

CG_PRECONDITIONER_DTYPE = jnp.float32
"""The precision of the conjugate-gradient solves' preconditioner (its two passes over the kept rows;
the solves' residuals and products stay in the flow's float64). A preconditioner only steers the
iteration, so its rounding at 1e-7 changes the iterates' path, not what they converge to, and each pass
reads half the bytes: problem C 2.15 s against 2.52 s, D 46.0 s against 47.3 s (docs/performance.md).
GMRES, the solves near a saddle (I + cH indefinite), keeps float64: in float32 its residual after one
cycle on tests/test_krylov.py's saddle grew from 8.5e-5 to 1.1e-4."""

POSITIVE_MARGIN = 0.1
"""CG is used when the kept eigenvalues give $1 + c\\lambda_{min} >$ this: I + cH is then safely
positive definite (the margin covers a $\\lambda_{min}$ that Lanczos places slightly too high)."""


def _over_kept_prefix(curvature: Float[Array, " r"], make: Callable[[int], Array]) -> Array:
    """`make(w)` for the smallest width `w` of `KEPT_WIDTHS` (or `r`) that holds every kept pair (the
    rows with a nonzero value: `lanczos_eigenpairs` puts them first). Rows past the prefix are zero,
    so every branch gives what all `r` rows would, reading fewer of them."""
    r = curvature.shape[0]
    widths = sorted({w for w in KEPT_WIDTHS if w < r} | {r})
    index = jnp.searchsorted(jnp.asarray(widths), jnp.sum(curvature != 0))  # the first width >= the count
    return jax.lax.switch(index, [lambda w=w: make(w) for w in widths])


def _renewal_products(n: int) -> int:
    """The exact products one renewal of the kept eigenpairs takes: a Lanczos step each."""
    return min(LANCZOS_STEPS, n)


def _hessian_product(terms, t, y, args):
    def product(v):
        return -jax.jvp(lambda x: terms.vf(t, x, args), (y,), (v,))[1]

    return product


def _difference_step(y: Float[Array, " n"]) -> Float[Array, ""]:
    """The length $\\sqrt{\\epsilon_{mach}}(1 + \\|y\\|)$ of a difference product's step $\\varepsilon v$."""
    return jnp.sqrt(jnp.finfo(y.dtype).eps) * (1.0 + jnp.linalg.norm(y))


def _difference_product(terms, t, y, args, field_at_y):
    """$Hv$ as a forward difference of the vector field $f = -\\nabla L$ (the module docstring):
    $-(f(y + \\varepsilon v) - f(y)) / \\varepsilon$ with $\\varepsilon = \\sqrt{\\epsilon_{mach}}
    (1 + \\|y\\|) / \\|v\\|$, the usual Jacobian-free Newton-Krylov step (Knoll & Keyes 2004): its
    truncation error is of order $\\varepsilon \\|v\\|$ on the scale on which H changes, its rounding error
    of order $\\epsilon_{mach} / \\varepsilon$, both about $\\sqrt{\\epsilon_{mach}}$ relative."""
    offset = _difference_step(y)

    def product(v):
        size = jnp.linalg.norm(v)
        eps = offset / jnp.where(size > 0, size, 1.0)
        return jnp.where(size > 0, (field_at_y - terms.vf(t, y + eps * v, args)) / eps, 0.0)

    return product


def lanczos_tridiagonal(product, n: int, steps: int, dtype) -> tuple[Float[Array, "m n"], Float[Array, "m m"],
                                                                       Float[Array, ""]]:
    """`min(steps, n)` Lanczos steps of the symmetric operator `product` with full reorthogonalisation,
    from a fixed start vector: the basis $Q$ (rows), the tridiagonal $T = Q A Q^\\top$ and the last
    off-diagonal $\\beta_m$ (the residual scale of the Ritz pairs). Deterministic, so a rerun repeats it."""
    m = min(steps, n)
    start = jnp.cos(jnp.arange(1, n + 1, dtype=dtype) * 1.618034)  # fixed, no zero entries in practice
    start = start / jnp.linalg.norm(start)

    def body(j, carry):
        Q, alpha, beta, q = carry
        Q = Q.at[j].set(q)
        w = product(q)
        a = q @ w

        def reorthogonalise(rows):  # against the rows filled so far (the rest of Q is zero)
            v = w - Q[:rows].T @ (Q[:rows] @ w)
            return v - Q[:rows].T @ (Q[:rows] @ v)  # twice is enough (Kahan)

        widths = list(range(REORTHOGONALISATION_BLOCK, m, REORTHOGONALISATION_BLOCK)) + [m]
        w = jax.lax.switch(j // REORTHOGONALISATION_BLOCK, [lambda r=r: reorthogonalise(r) for r in widths])
        b = jnp.linalg.norm(w)
        q = jnp.where(b > 0, w / jnp.where(b > 0, b, 1.0), 0.0)
        return Q, alpha.at[j].set(a), beta.at[j].set(b), q

    Q0 = jnp.zeros((m, n), dtype)
    Q, alpha, beta, _ = jax.lax.fori_loop(0, m, body, (Q0, jnp.zeros(m, dtype), jnp.zeros(m, dtype), start))
    return Q, jnp.diag(alpha) + jnp.diag(beta[:-1], 1) + jnp.diag(beta[:-1], -1), beta[-1]


def lanczos_eigenpairs(product, n: int, steps: int, dtype,
                       slots: int | None = None) -> tuple[Float[Array, "k n"], Float[Array, " k"]]:
    """Ritz pairs of the symmetric operator `product` from `steps` Lanczos steps with full
    reorthogonalisation, the vectors as `slots` rows (default: one per step): the converged ones
    (`RITZ_TOLERANCE`) first, negative values first among them, then by size; the rest come back as
    zero vectors with zero values, so they act as absent. Rows, not columns: a leading block of rows
    is contiguous, so a product with only the converged ones reads only them (`KEPT_WIDTHS`)."""
    Q, T, beta_last = lanczos_tridiagonal(product, n, steps, dtype)
    theta, S = jnp.linalg.eigh(T)
    residual = jnp.abs(beta_last * S[-1])
    scale = jnp.maximum(jnp.max(jnp.abs(theta)), jnp.finfo(dtype).tiny)
    good = residual <= RITZ_TOLERANCE * scale
    k = theta.shape[0] if slots is None else min(slots, theta.shape[0])
    # unstable directions first (the error control needs every one), then the stiffest
    order = jnp.lexsort((-jnp.abs(theta), theta >= 0, ~good))[:k]
    good, theta, S = good[order], theta[order], S[:, order]
    return jnp.where(good[:, None], S.T @ Q, 0.0), jnp.where(good, theta, 0.0)


def _through_rows(rows: Float[Array, "r n"], curvature: Float[Array, " r"], weights: Float[Array, " r"],
                  v: Float[Array, " n"]) -> Float[Array, " n"]:
    """$V^\\top \\mathrm{diag}(w)\\,V v$ with the kept `rows` $V$, reading only those that hold a pair."""
    return _over_kept_prefix(curvature, lambda w: rows[:w].T @ ((rows[:w] @ v) * weights[:w]))


class KeptRows(eqx.Module):
    """The kept eigenvectors as rows (`lanczos_eigenpairs`), in the flow's precision and, converted once
    per renewal, in the conjugate-gradient preconditioner's (`CG_PRECONDITIONER_DTYPE`). Converted at
    every Newton solve instead, the copy took 22 µs a solve at problem F's size (3,456 parameters), about
    50 µs a step, and 260 µs a solve at problem D's (36,864)."""

    rows: Float[Array, "r n"]
    preconditioner_rows: Float[Array, "r n"]

    @classmethod
    def of(cls, rows: Float[Array, "r n"]) -> KeptRows:
        return cls(rows, rows.astype(CG_PRECONDITIONER_DTYPE))


class GradientFlowKrylovBDF(GradientFlowBDF):
    """`GradientFlowBDF`'s steps with matrix-free Newton solves (module docstring): for flows with
    thousands of parameters and more, where a dense Hessian costs too much time and memory."""

    dense_hessian: ClassVar[bool] = False
    newton_iterations: int = eqx.field(static=True, default=NEWTON_MAXITER)
    """scipy's cap, and below CVODE's divergence ratio and tolerance: with the Hessian at the step in
    every solve, the corrections contract as Newton's do, and a stalled iteration is a step too long,
    not a stale Newton matrix (the dense BDF's `MIXED_NEWTON_MAXITER`, `MIXED_NEWTON_DIVERGENCE` and
    `MIXED_NEWTON_TOLERANCE`)."""
    newton_divergence: float | None = eqx.field(static=True, default=NEWTON_DIVERGENCE)
    newton_tolerance: float | None = eqx.field(static=True, default=NEWTON_TOLERANCE)
    newton_acceleration: int = eqx.field(static=True, default=0)
    """No Anderson's mixing here by default (`_anderson.py`): each Newton solve already uses the
    Hessian at the step (its products), and only the preconditioner is kept, so there is no stale
    Newton matrix for the mixing to correct; what the corrections miss is the capped conjugate-gradient
    solve's error, which changes from one correction to the next. Measured on problem D of
    docs/performance.md (the switching default): 80.2 s with a memory of 3 against 67.1 s without
    (223 and 182 Lanczos renewals); C and F unchanged."""

    difference_products: bool = eqx.field(static=True, default=True)
    """The Newton solves' products as forward differences of the gradient (the module docstring);
    False: exact forward-over-reverse products (`jax.jvp` of the gradient)."""

    def counters(self, solver_state) -> dict:
        return super().counters(solver_state) | {"num_hessian_vector_products": solver_state.products}

    def work_in_gradients(self, work: dict[str, int], n_params: int) -> float:
        """Gradients; each renewal's Lanczos products exact (`EXACT_PRODUCT_COST`); the Newton solves'
        products one gradient each when they are differences (the few that a faint deviation makes exact
        are counted as differences too: 24 of problem C's 5,181 solves)."""
        lanczos = _renewal_products(n_params) * work.get("num_hessian_evaluations", 0)
        newton = work.get("num_hessian_vector_products", 0) - lanczos
        newton_cost = 1.0 if self.difference_products else EXACT_PRODUCT_COST
        return work.get("num_gradient_evaluations", 0) + EXACT_PRODUCT_COST * lanczos + newton_cost * newton

    def kept_eigenpairs(self, terms, t, y, args) -> tuple[KeptRows, Float[Array, " m"], Int[Array, ""]]:
        rows, curvature = lanczos_eigenpairs(_hessian_product(terms, t, y, args), y.shape[0], LANCZOS_STEPS,
                                             y.dtype, KEPT_PAIRS)
        return KeptRows.of(rows), curvature, jnp.asarray(_renewal_products(y.shape[0]), jnp.int32)

    # The kept vectors are rows here (`lanczos_eigenpairs`), and products read only the converged ones.
    def in_kept_basis(self, basis: KeptRows, curvature, v):
        rows = basis.rows
        r = rows.shape[0]

        def coordinates(w):
            # a stack of vectors one product at a time: inside the run, XLA's CPU product of a 4 x n stack
            # with the 24 x n rows took 230 µs at problem F's size, four products 24 µs (docs/performance.md)
            stack = v.reshape(-1, v.shape[-1])
            within = jnp.stack([rows[:w] @ u for u in stack]).reshape(*v.shape[:-1], w)
            return jnp.concatenate([within, jnp.zeros((*v.shape[:-1], r - w), v.dtype)], axis=-1)

        return _over_kept_prefix(curvature, coordinates)

    def through_kept(self, basis: KeptRows, curvature, weights, v):
        return _through_rows(basis.rows, curvature, weights, v)

    @property
    def needs_field_at_prediction(self) -> bool:
        return self.difference_products

    def solve_newton_system(self, terms, t, y, args, c, basis, curvature, rhs, field_at_y=None):
        structure = jax.ShapeDtypeStruct(rhs.shape, rhs.dtype)
        shrink = 1.0 / jnp.abs(1.0 + c * curvature) - 1.0

        def preconditioner(rows):  # the kept pairs' inverse, its passes over `rows` in their precision
            dtype = rows.dtype
            weights = shrink.astype(dtype)

            def apply(v):
                return v + _through_rows(rows, curvature, weights, v.astype(dtype)).astype(v.dtype)

            return lx.FunctionLinearOperator(apply, structure, (lx.symmetric_tag, lx.positive_semidefinite_tag))

        guess, _ = super().solve_newton_system(terms, t, y, args, c, basis, curvature, rhs)  # exact on the kept pairs

        def conjugate_gradients(product):
            spd = lx.FunctionLinearOperator(lambda v: v + c * product(v), structure,
                                            (lx.symmetric_tag, lx.positive_semidefinite_tag))
            # lineax's CG takes one product for the starting residual and one per iteration (no
            # periodic recomputation of the residual: with at most 10 iterations it would only be
            # spent on the last one's convergence check)
            solver = lx.CG(rtol=KRYLOV_RTOL, atol=0.0, norm=_two_norm, max_steps=KRYLOV_MAX_PRODUCTS,
                           stabilise_every=None)
            options = {"preconditioner": preconditioner(basis.preconditioner_rows), "y0": guess}
            solution = lx.linear_solve(spd, rhs, solver, options=options, throw=False)
            return solution.value, 1 + solution.stats["num_steps"].astype(jnp.int32)

        def gmres(product):
            # One GMRES cycle of KRYLOV_MAX_PRODUCTS products. lineax counts cycles, and its first
            # "cycle" only forms the starting residual (one product): `max_steps=1` would return the
            # starting guess unchanged. A cycle ends with one product for its residual.
            matrix = lx.FunctionLinearOperator(lambda v: v + c * product(v), structure, lx.symmetric_tag)
            solver = lx.GMRES(rtol=KRYLOV_RTOL, atol=0.0, norm=_two_norm, max_steps=2,
                              restart=min(KRYLOV_MAX_PRODUCTS, rhs.shape[0]))
            options = {"preconditioner": preconditioner(basis.rows), "y0": guess}
            solution = lx.linear_solve(matrix, rhs, solver, options=options, throw=False)
            cycles = solution.stats["num_steps"].astype(jnp.int32) - 1
            return solution.value, 1 + cycles * (solver.restart + 1)

        # I + cH is positive definite unless c |lambda_min| >= 1; Lanczos finds lambda_min accurately
        # (an extreme eigenvalue), and CG is then the cheaper, unrestarted method.
        definite = 1.0 + c * jnp.min(jnp.minimum(curvature, 0.0)) > POSITIVE_MARGIN
        exact = _hessian_product(terms, t, y, args)
        if not self.difference_products:
            return jax.lax.cond(definite, lambda: conjugate_gradients(exact), lambda: gmres(exact))
        field_at_y = terms.vf(t, y, args) if field_at_y is None else field_at_y
        difference = _difference_product(terms, t, y, args, field_at_y)
        # Exact products where a kept unstable direction holds less of y than a difference step moves
        # (the module docstring): there the difference's error would be the deviation's own size.
        # One choice per solve, not per product: a branch inside CG's loop cost problem C 15%.
        along = self.in_kept_basis(basis, curvature, y)
        faint = jnp.any((curvature < 0) & (jnp.abs(along) < _difference_step(y)))
        branches = [lambda: conjugate_gradients(difference), lambda: conjugate_gradients(exact),
                    lambda: gmres(difference), lambda: gmres(exact)]
        return jax.lax.switch(2 * (~definite).astype(jnp.int32) + faint.astype(jnp.int32), branches)


def _two_norm(x):
    """The 2-norm of lineax's entry-by-entry ratios (the module docstring), an entry 0 / 0 counted as 0
    (met). lineax divides the residual by rtol |rhs| and the update by rtol |x|: at a coordinate the
    loss does not depend on, both can be exactly zero, and the NaN there made the norm NaN, which its test
    (`norm > 1`) reads as converged, stopping the solve after one iteration (tests/test_krylov.py). A
    nonzero over zero stays infinite: not met. Problems C and F never hit the case (their runs take the
    same steps and products either way)."""
    x = jnp.where(jnp.isnan(x), 0.0, x)
    return jnp.sqrt(jnp.sum(x * x))
