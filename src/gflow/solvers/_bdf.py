"""A variable-order BDF (NDF) solver for gradient flows, inside diffrax, with a kept eigendecomposition.

The method is the one of scipy's `solve_ivp(method="BDF")` and MATLAB's `ode15s`: the numerical
differentiation formulas of Shampine & Reichelt (1997), *The MATLAB ODE suite*, SIAM J. Sci. Comput.
18(1), orders 1 to 5 in the quasi-constant step-size form with backward differences $D$ (rescaled
when the step changes), one simplified-Newton solve per step, and step size and order chosen together
from the error estimates of orders $k - 1$, $k$, $k + 1$ after $k + 1$ steps of equal size. The
constants and the step/order logic follow scipy's implementation so that the two can be checked
against each other (tests/test_bdf.py).

What is different is the linear algebra. Newton's matrix is $I - cJ = I + cH$ with $H$ the Hessian,
symmetric: kept as $Q\\,\\mathrm{diag}(\\lambda)\\,Q^\\top$ from one `eigh`, every Newton solve is two
products with $Q$ for *any* $c$, so the step-size changes that make scipy refactorise its LU cost
nothing here. As in scipy, the Hessian is recomputed when Newton's iteration fails to converge
with the kept one (and when a stale one limits the step, `STALE_LIMIT_STEPS`); the iteration mixes
its last corrections (Anderson's mixing, `_anderson.py`), so that a kept Hessian that has turned
still converges in most steps, within `MIXED_NEWTON_MAXITER` corrections. A step costs one to four
gradients most often: at most twelve with the kept Hessian, and twelve more when that iteration fails
and is tried again with a renewed one.

diffrax's step-size controllers choose a step from one error estimate of a fixed order; a
variable-order method chooses step and order together. The solver therefore makes both decisions
and reports them as a `StepDecision` to `SolverChosenSteps`, the controller that carries them out
(`_chosen_steps.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from ._anderson import Memory, mixed_step
from ._base import AbstractGradientFlowSolver
from ._chosen_steps import SolverChosenSteps, StepDecision, rms
from ._hessian import hessian_eigenbasis, unstable_error_norm, unstable_step_limit

MAX_ORDER = 5
EXACT_PRODUCT_COST = 2.0
"""One exact (forward-over-reverse) Hessian-vector product in gradient evaluations, for the work
counts the switching default compares (`work_in_gradients`): measured inside a compiled loop, 1.7 at
problem C's size, 1.8 at F's and 2.1 at D's (docs/performance.md, 2026-12-07, sixth session); 2 is the
round figure between them."""
NEWTON_MAXITER = 4
"""scipy's cap on Newton iterations per step: the Krylov BDF's and that of scipy's algorithm
(`GradientFlowBDF(newton_iterations=4, newton_divergence=None, newton_tolerance=None,
newton_acceleration=0)`)."""
MIXED_NEWTON_MAXITER = 12
"""The dense BDF's cap on Newton iterations per step (`GradientFlowBDF(newton_iterations=...)`). A
kept Hessian that has turned makes the chord iteration stall, and renewing it costs a Hessian and an
`eigh`: 3.4 ms at 224 parameters, the time of a hundred iterations or more within the step. Anderson's
mixing (`NEWTON_ACCELERATION`) still converges there, but often after more than scipy's four
corrections. Measured with `MIXED_NEWTON_DIVERGENCE` and `MIXED_NEWTON_TOLERANCE` against the previous
iteration (scipy's cap, CVODE's ratio and tolerance; rtol 1e-6 to t = 1e5, `benchmarks/newton.py`):
problem E of docs/performance.md 76 renewals against 133, 0.37-0.39 s against 0.48-0.49 s; on nine more
flows of 56 to 348 parameters 3-24% less time, or level where no more than ten Hessians were renewed;
errors equal or smaller. The cap was chosen with a ratio of 4 and CVODE's tolerance: 16 took the same
steps as 12 on E and two chains (the divergence test ends the iteration first), and 8 was 10% slower
on E. (With CVODE's tolerance kept, problem A was 5% slower; see `MIXED_NEWTON_TOLERANCE`.)"""
NEWTON_TOLERANCE = 0.1
"""Newton's iteration stops when its predicted remaining error is below this, in the units of the
local error test (whose bound is 1). CVODE's value (SUNDIALS' nonlinear convergence coefficient,
0.1): the iteration error is then a tenth of what the step may carry, so the error estimate stays
the truncation error's. scipy asks for min(0.03, sqrt(rtol)), 1e-3 at rtol 1e-6: a hundred times
less, which makes Newton fail and the Hessian be renewed more often, at no gain in accuracy
(measured on problems A, C and the untuned E of docs/performance.md: 13-27% less time, errors within
6% of scipy's rule's, 2.6x smaller on C). `GradientFlowBDF(newton_tolerance=None)` is scipy's rule."""
MIXED_NEWTON_TOLERANCE = 0.05
"""The dense BDF's Newton tolerance (`GradientFlowBDF(newton_tolerance=...)`): half of CVODE's
`NEWTON_TOLERANCE`. The remaining error that the convergence test predicts is rate / (1 - rate) times
the last correction, and the mixed iteration that runs past four corrections (`MIXED_NEWTON_MAXITER`)
contracts slowly, with a rate that is itself an estimate. Its iteration error then reaches the
solution's backward differences, from which the next order is chosen: on problem E at 0.1 the run
took 378 steps at order 3 against 138 with the previous iteration, and 2,639 steps in all against
2,296. At 0.05 it took 2,353 (0.03: 2,267; 0.01: 2,303). Measured (the dense BDF with
`MIXED_NEWTON_MAXITER` and `MIXED_NEWTON_DIVERGENCE`, alternating runs in one process; the previous
iteration in brackets): problem E 0.397 s against 0.418 s at 0.1 (0.513 s), problem A 0.148 s against
0.159 s (0.151 s), a sticky chain of 144 parameters 0.133 s against 0.135 s (0.138 s); over five more
flows 0.05 and 0.03 were within 6% of each other and of 0.1, at 0.01 the largest flow (288 parameters)
took 18% longer (these eight flows: E, A and six of those of `benchmarks/newton.py`). Errors against
the rtol-1e-9 references: equal to two digits, or smaller."""
NEWTON_DIVERGENCE = 2.0
"""Newton's iteration is abandoned (and, with a kept Hessian, the Hessian renewed) when a correction
is more than this many times the one before: CVODE's test (SUNDIALS' `RDIV`). scipy abandons it as
soon as the ratio reaches 1, or when the ratio predicts no convergence within the remaining
iterations; with a kept Hessian the first ratio is a noisy estimate, and most of those iterations
would have converged. Measured on problem E of docs/performance.md (the dense BDF, alternating
runs): 218 Hessian renewals against 294, 1.29-1.48 s (five runs) against 1.67-1.76 s (three), the
same error (5.59e-5 against 5.59e-5). `GradientFlowBDF(newton_divergence=None)` is scipy's test
(exactly scipy's with `newton_iterations=4`: its test counts the iterations left under the cap).
That measurement was the chord iteration's, with `NEWTON_MAXITER`; this is now the Krylov BDF's ratio,
and the dense BDF's default, which mixes its corrections, is `MIXED_NEWTON_DIVERGENCE`."""
MIXED_NEWTON_DIVERGENCE = 3.0
"""The dense BDF's divergence ratio (`GradientFlowBDF(newton_divergence=...)`). With Anderson's
mixing a correction is the residual at a mixed iterate, not the chord iteration's contracted
correction, and a single ratio above 2 is often followed by convergence. The ratio trades renewals
against how fresh the kept eigenvectors are, which the unstable-direction error test needs
(`unstable_error_norm`). Measured with `MIXED_NEWTON_MAXITER` and CVODE's tolerance on problem E:
ratios of 2, 3, 4, 6 and 10 gave 95, 77, 63, 54 and 49 renewals and 0.49, 0.42-0.45, 0.39-0.40, 0.42
and 0.45 s (beyond 4 the time saved on renewals goes to longer iterations and more steps). But at 4
one escape of tests/test_saddle.py (a degenerate saddle, pi = (0.4, 0.3, 0.15, 0.15), deviation
1e-10) came 0.46% early against the explicit reference, outside the test's 0.3%, where 3 gives
-0.001%. With `MIXED_NEWTON_TOLERANCE` a ratio of 4 passes that case too (-0.001%): the escape time
jumps with how fresh the kept basis happens to be, so 3 is kept for the margin. At 3 all nine cases of
the test are within 0.05% (0.06% before the change), and so are twelve more (four other chains with
two equal rare tokens, deviations 1e-8, 1e-11 and 1e-12)."""
NEWTON_ACCELERATION = 3
"""Anderson's mixing of the last three corrections in Newton's iteration (`_anderson.py`). With a kept
Hessian that has turned, the chord iteration stalls and the Hessian is renewed; mixed steps converge
in most of those steps. Measured (dense BDF, rtol 1e-6, t to 1e5, against the chord iteration): problem E
of docs/performance.md 133 renewals against 215 and 0.56 s against 0.76 s at the same error (5.2e-5
against 5.4e-5); three untuned chains of 132-256 parameters 117/174, 83/139 and 172/264 renewals,
15-28% less time, errors equal or smaller; a memory of 2 within 2% of 3 (under the cap of four
corrections, 3 is the whole history and larger memories give the same steps). Under the cap of 12
(`MIXED_NEWTON_MAXITER`, with a divergence ratio of 4), memories of 5 and 8 were within 5% of 3 on E
and three chains. The Krylov BDF does not mix by default (`GradientFlowKrylovBDF.newton_acceleration`)."""
MIXED_STEP_BOUND = 10.0
"""A mixed step longer than this many times the chord correction (in the error norm) is replaced by the
correction: the least-squares fit behind it was ill-posed (nearly parallel differences). Never reached
on problem E or the untuned chains of docs/performance.md; a guard, not a tuning."""
RATE_MEMORY = 0.3
"""With mixing, Newton's contraction rate is the larger of the latest ratio of corrections and this
times the rate before: CVODE's `crate` with SUNDIALS' `CRDOWN` = 0.3, restarted at every step (CVODE
keeps it from step to step until the Jacobian is renewed)."""
STALE_LIMIT_STEPS = 20
"""A step that `unstable_step_limit` cut, with eigenpairs kept over at least this many steps, renews
them before the next step's Newton iteration. The limit is the kept Hessian's, and Newton cannot
tell that it is stale: the unstable curvatures are far below $1/c$, so they hardly change Newton's
matrix. When a saddle is left, its rate falls by orders of magnitude (problem E of docs/performance.md:
0.093 on its first plateau, 1e-4 on its second), and the kept rate then held every step of the next
plateau at a thousandth of the flow's own limit (5.35 against 5,000): 8,908 steps to t = 1e5 with one
save time, against 2,107 with this renewal (the benchmarks' save grid hid it, its chunks restarting the
solver). A limit that binds with a current Hessian binds for at most about $2\\ln(1/\\epsilon) \\approx 72$
steps when the deviation is at least round-off (each step grows it by $e^{0.5}$, to order one). Where
it binds longer (a deviation exactly zero: a state on an invariant subspace), a renewal that does not
relax the limit by more than 2x doubles the wait before the next one, up to `MAX_PATIENCE`: a few
renewals per saddle either way. 20 is also `GradientFlowRosenbrock`'s `max_age`."""
MAX_PATIENCE = 2**20
"""The longest wait `STALE_LIMIT_STEPS` doubles to (a bound that keeps the counter far from overflow)."""
SAFETY_ITERATIONS = 4
"""The next step's safety factor after $k$ Newton iterations is scipy's $0.9\\,(2K + 1)/(2K + \\min(k, K))$
with $K$ the smaller of `newton_iterations` and this (scipy's cap, `NEWTON_MAXITER`): from 0.9 after
one iteration to 0.675 after four. Beyond four no further penalty, so that a larger
`newton_iterations` does not shrink every step; with a cap of four or less the factor is scipy's."""
MIN_FACTOR = 0.2
MAX_FACTOR = 10.0
# NDF coefficients kappa_k (Shampine & Reichelt 1997, table 1; zero for order 5: plain BDF5), and
# the derived gamma_k = sum_{j<=k} 1/j, alpha_k = (1 - kappa_k) gamma_k and error constants.
_KAPPA = np.array([0.0, -0.1850, -1.0 / 9.0, -0.0823, -0.0415, 0.0])
_GAMMA = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, MAX_ORDER + 1))])
_ALPHA = (1.0 - _KAPPA) * _GAMMA
_ERROR_CONST = _KAPPA * _GAMMA + 1.0 / np.arange(1, MAX_ORDER + 2)
_ROWS = MAX_ORDER + 3  # D holds differences of orders 0..MAX_ORDER + 2


def _difference_rescaling(order: Int[Array, ""], factor: Float[Array, ""]) -> Float[Array, "6 6"]:
    """The matrix that rescales $D_{0..k}$ from step $h$ to step `factor` $h$ (scipy's `R U`), padded
    with the identity beyond `order`."""
    size = MAX_ORDER + 1
    i = jnp.arange(size, dtype=order.dtype)[:, None]
    j = jnp.arange(size, dtype=order.dtype)[None, :]
    fi, fj = i.astype(factor.dtype), j.astype(factor.dtype)
    block = (i <= order) & (j <= order)

    def r(f):
        m = jnp.where(i == 0, 1.0, jnp.where(j == 0, 0.0, (fi - 1 - f * fj) / jnp.maximum(fi, 1.0)))
        return jnp.where(block, jnp.cumprod(m, axis=0), 0.0)

    return jnp.where(block, r(factor) @ r(jnp.ones_like(factor)), jnp.eye(size, dtype=factor.dtype))


def _rescale(differences: Float[Array, "rows n"], order, factor) -> Float[Array, "rows n"]:
    """$D_{0..5} \\leftarrow (RU)^\\top D_{0..5}$, as a sum of the six scaled rows: XLA's CPU product of
    the transposed 6 x 6 matrix with the 6 x n rows took 9 µs at problem F's size (3,456 parameters),
    the sum 3.5 µs."""
    rescaling = _difference_rescaling(order, factor)
    head = sum(rescaling[j][:, None] * differences[j] for j in range(MAX_ORDER + 1))
    return differences.at[: MAX_ORDER + 1].set(head)


def _tail_sums(rows: Float[Array, "rows n"]) -> Float[Array, "rows n"]:
    """$S_i = \\sum_{j \\ge i} D_j$, summed from the last row up, as `cumsum` over the reversed rows
    does (the same round-off: scipy's step decisions are compared step for step), but unrolled:
    XLA's CPU cumulative sum along the leading axis of an 8 x n array took 2 ms at 36,864
    parameters, the unrolled sum 0.24 ms."""
    sums = [rows[-1]]
    for row in rows[-2::-1]:
        sums.append(sums[-1] + row)
    return jnp.stack(sums[::-1])


class _State(eqx.Module):
    differences: Float[Array, "rows n"]  # D: backward differences of the solution, for step h
    h: Float[Array, ""]  # the step D is scaled for (the last accepted one)
    order: Int[Array, ""]
    equal_steps: Int[Array, ""]  # accepted steps since the last change of h or order
    # Q and lambda: eigenpairs of a Hessian taken earlier (r = n when dense); Q's layout is the solver's
    # (`in_kept_basis`): columns n x r for the dense one, the Krylov one's rows r x n (`KeptRows`)
    basis: Float[Array, "n r"] | eqx.Module
    curvature: Float[Array, " r"]
    kept_steps: Int[Array, ""]  # steps taken since the eigenpairs were computed
    limited: Bool[Array, ""]  # the last step was cut by the kept eigenpairs' `unstable_step_limit`
    patience: Int[Array, ""]  # kept steps after which a cut step renews them (`STALE_LIMIT_STEPS`, doubled)
    hessians: Int[Array, ""]  # statistics, for gflow's Trajectory.stats
    gradients: Int[Array, ""]
    products: Int[Array, ""]  # Hessian-vector products (matrix-free solvers)


class BDFInterpolation(diffrax.AbstractLocalInterpolation):
    """The step's interpolating polynomial of degree `order` in Newton form through $D$ (scipy's
    `BdfDenseOutput`)."""

    t0: Float[Array, ""]
    t1: Float[Array, ""]
    differences: Float[Array, "6 n"]
    order: Int[Array, ""]
    h: Float[Array, ""]

    def _at(self, t):
        m = jnp.arange(MAX_ORDER, dtype=self.order.dtype)
        fm = m.astype(self.h.dtype)
        factors = (t - (self.t1 - fm * self.h)) / ((fm + 1) * self.h)
        weights = jnp.where(m < self.order, jnp.cumprod(factors), 0.0)
        return self.differences[0] + weights @ self.differences[1:]

    def evaluate(self, t0, t1=None, left: bool = True):
        del left
        return self._at(t0) if t1 is None else self._at(t1) - self._at(t0)


class GradientFlowBDF(AbstractGradientFlowSolver):
    """Variable-order NDF/BDF steps (orders 1-5) with a kept symmetric eigendecomposition of the Hessian.

    Run it under `SolverChosenSteps(rtol, atol)`, its `step_size_controller()` (`gflow.simulate`
    does); its "error" is a `StepDecision`, which any other controller refuses with a clear error.
    The solver assumes an autonomous vector field with a symmetric Jacobian (a gradient flow).
    """

    rtol: Float[Array, ""] | float
    atol: Float[Array, ""] | float
    newton_iterations: int = eqx.field(static=True, default=MIXED_NEWTON_MAXITER)
    """Newton's cap per step (`MIXED_NEWTON_MAXITER`; scipy's is `NEWTON_MAXITER`)."""
    newton_tolerance: float | None = eqx.field(static=True, default=MIXED_NEWTON_TOLERANCE)
    """Newton stops when its predicted error is below this (in the units of the local error test;
    `MIXED_NEWTON_TOLERANCE`, CVODE's is `NEWTON_TOLERANCE`); `None`: scipy's
    $\\max(10\\epsilon/rtol, \\min(0.03, \\sqrt{rtol}))$."""
    newton_divergence: float | None = eqx.field(static=True, default=MIXED_NEWTON_DIVERGENCE)
    """Newton is abandoned when a correction grows by more than this factor; `None`: scipy's test
    (`NEWTON_DIVERGENCE`)."""
    newton_acceleration: int = eqx.field(static=True, default=NEWTON_ACCELERATION)
    """How many earlier corrections Anderson's mixing combines in Newton's iteration (`_anderson.py`;
    `NEWTON_ACCELERATION`); 0: the plain chord iteration, as scipy."""

    def __check_init__(self):
        if not (isinstance(self.newton_acceleration, int) and self.newton_acceleration >= 0):
            raise ValueError(f"`newton_acceleration` must be a whole number >= 0 (0: the chord iteration); "
                             f"got {self.newton_acceleration!r}.")

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar[Callable[..., BDFInterpolation]] = BDFInterpolation
    dense_hessian: ClassVar[bool] = True

    def order(self, terms) -> int:
        return MAX_ORDER

    def step_size_controller(self) -> SolverChosenSteps:
        return SolverChosenSteps(rtol=self.rtol, atol=self.atol)

    def counters(self, solver_state: _State) -> dict:
        return {"num_hessian_evaluations": solver_state.hessians, "num_gradient_evaluations": solver_state.gradients}

    def work_in_gradients(self, work: dict[str, int], n_params: int) -> float:
        """The work this solver's counters `work` record, in gradient evaluations: its gradients, and each
        Hessian (`jax.hessian`: `n_params` exact Hessian-vector products) at `EXACT_PRODUCT_COST`."""
        return work.get("num_gradient_evaluations", 0) + \
            EXACT_PRODUCT_COST * n_params * work.get("num_hessian_evaluations", 0)

    # The two places where the linear algebra lives; a matrix-free subclass replaces both (_krylov.py).
    def kept_eigenpairs(self, terms, t, y, args) -> tuple[Float[Array, "n r"], Float[Array, " r"], Int[Array, ""]]:
        """The Hessian's eigenpairs kept across steps, and the Hessian-vector products they cost
        (a dense Hessian: all n eigenpairs; its products are not counted)."""
        basis, curvature = hessian_eigenbasis(terms, t, y, args)
        return basis, curvature, jnp.zeros((), jnp.int32)

    needs_field_at_prediction: ClassVar[bool] = False
    """Whether `solve_newton_system` reads the vector field at the predicted point (`field_at_y`):
    a solver whose products are difference quotients of the field does (`_krylov.py`)."""

    def solve_newton_system(self, terms, t, y, args, c, basis, curvature, rhs,
                            field_at_y=None) -> tuple[Float[Array, " n"], Int[Array, ""]]:
        """$(I + cH)^{-1}$ rhs with the kept eigenpairs (exact when they are all of H's), and the
        Hessian-vector products it took. `field_at_y`: the vector field at (t, y), given when
        `needs_field_at_prediction`."""
        return self.through_kept(basis, curvature, 1.0 / (1.0 + c * curvature), rhs), jnp.zeros((), jnp.int32)

    def in_kept_basis(self, basis, curvature, v: Float[Array, "*k n"]) -> Float[Array, "*k r"]:
        """$Q^\\top v$: `v`'s coordinates along the kept eigenvectors (of each row, for a stack of
        vectors: one pass over $Q$ for all of them)."""
        return v @ basis

    def through_kept(self, basis, curvature, weights: Float[Array, " r"], v: Float[Array, " n"]) -> Float[Array, " n"]:
        """$Q\\,\\mathrm{diag}(w)\\,Q^\\top v$ with the kept eigenvectors $Q$ and `weights` $w$."""
        return basis @ (self.in_kept_basis(basis, curvature, v) * weights)

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def init(self, terms, t0, t1, y0, args) -> _State:
        differences = jnp.zeros((_ROWS, y0.shape[0]), y0.dtype)
        h = jnp.asarray(t1 - t0, y0.dtype)
        differences = differences.at[0].set(y0).at[1].set(h * terms.vf(t0, y0, args))
        one = jnp.ones((), jnp.int32)
        basis, curvature, products = self.kept_eigenpairs(terms, t0, y0, args)
        return _State(differences, h, one, 0 * one, basis, curvature, 0 * one, jnp.zeros((), bool),
                      STALE_LIMIT_STEPS * one, one, one, products)

    def _newton(self, terms, t_new, y_predict, c, psi, scale, basis, curvature, args):
        """scipy's `solve_bdf_system`, with Anderson's mixing of the corrections unless
        `newton_acceleration` is 0: (converged, iterations, y, d, products) with $d = y - y_{pred}$."""
        if self.newton_tolerance is None:
            tol = jnp.maximum(10 * jnp.finfo(y_predict.dtype).eps / self.rtol, jnp.minimum(0.03, jnp.sqrt(self.rtol)))
        else:
            tol = jnp.asarray(self.newton_tolerance, y_predict.dtype)

        mixing = self.newton_acceleration > 0

        # The first correction's residual is taken at the prediction; a solver that also needs the field
        # there for its products (`needs_field_at_prediction`) evaluates it once, for both
        field_at_prediction = terms.vf(t_new, y_predict, args) if self.needs_field_at_prediction else None

        def field_at(k, y):
            if field_at_prediction is None:
                return terms.vf(t_new, y, args)
            return jax.lax.cond(k == 0, lambda: field_at_prediction, lambda: terms.vf(t_new, y, args))

        def body(carry):
            k, y, d, norm_old, rate_before, _, _, products, memory = carry
            dy, used = self.solve_newton_system(terms, t_new, y_predict, args, c, basis, curvature,
                                                c * field_at(k, y) - psi - d, field_at_prediction)
            norm = rms(dy / scale)
            rate = norm / norm_old
            first = k == 0
            if self.newton_divergence is None:  # scipy's: no contraction, or none fast enough to converge in time
                remaining = (self.newton_iterations - k).astype(norm.dtype)
                growing = (rate >= 1) | (rate**remaining / (1 - rate) * norm > tol)
            else:  # CVODE's: only a correction that grows fast; a slow one may still converge in the cap
                growing = rate > self.newton_divergence
            diverging = ~jnp.isfinite(norm) | (~first & growing)
            # The remaining error after a correction is taken as rate / (1 - rate) |dy| (scipy's test). Mixed
            # steps shrink the later ratios faster than the kept Hessian's contraction, so with mixing the rate
            # is CVODE's estimate instead: the larger of the latest ratio and 0.3 times the rate before
            # (SUNDIALS' `crate` and `CRDOWN`, which it applies to its own accelerated fixed-point iteration)
            if mixing:
                rate = jnp.where(k >= 2, jnp.maximum(rate, RATE_MEMORY * rate_before), rate)
            converged = ~diverging & ((norm == 0) | (~first & (rate < 1) & (rate / (1 - rate) * norm < tol)))
            if mixing:  # a mixed step that is not finite, or far longer than the correction, is an ill-posed fit
                mixed, memory = mixed_step(memory, k, d, dy, scale)
                sound = jnp.all(jnp.isfinite(mixed)) & (rms(mixed / scale) <= MIXED_STEP_BOUND * norm)
                step = jnp.where(sound, mixed, dy)
            else:
                step = dy
            y = jnp.where(diverging, y, y + step)
            d = jnp.where(diverging, d, d + step)
            return k + 1, y, d, norm, rate, converged, diverging | converged, products + used, memory

        def cond(carry):
            k, *_, stop, _, _ = carry
            return ~stop & (k < self.newton_iterations)

        zero = jnp.zeros((), jnp.int32)
        nan = jnp.asarray(jnp.nan, y_predict.dtype)
        memory = Memory.empty(self.newton_acceleration, y_predict) if mixing else None
        start = (zero, y_predict, jnp.zeros_like(y_predict), nan, nan, jnp.zeros((), bool), jnp.zeros((), bool), zero,
                 memory)
        k, y, d, _, _, converged, _, products, _ = jax.lax.while_loop(cond, body, start)
        return converged, k, y, d, products

    def step(self, terms, t0, t1, y0, args, solver_state: _State, made_jump):
        s = solver_state
        h = jnp.asarray(t1 - t0, solver_state.h.dtype)
        order = s.order
        factor = h / s.h
        changed = factor != 1.0
        differences = jnp.where(changed, _rescale(s.differences, order, factor), s.differences)
        equal_steps = jnp.where(changed, 0, s.equal_steps)
        rows = jnp.arange(_ROWS, dtype=order.dtype)
        # a product, not a masked sum: XLA's CPU reduction along the leading axis of an 8 x n array took
        # 1.7-2 ms at 36,864 parameters, the product 0.08 ms
        y_predict = (rows <= order).astype(differences.dtype) @ differences
        scale = self.atol + self.rtol * jnp.abs(y_predict)
        gamma = jnp.asarray(np.concatenate([_GAMMA, [0.0, 0.0]]))
        alpha = jnp.asarray(_ALPHA)[order]
        psi = (jnp.where((rows >= 1) & (rows <= order), gamma, 0.0) @ differences) / alpha
        c = h / alpha

        # Newton with the kept Hessian, then (as scipy) once more with a fresh one if that failed:
        # one loop, so that the vector field and its Jacobian are traced (and compiled) once each. A
        # step limit set by stale eigenpairs renews them first (`STALE_LIMIT_STEPS`).
        renew_first = s.limited & (s.kept_steps >= s.patience)

        def attempt(carry):
            basis, curvature, hessians, products, tries, total, _ = carry

            def renew():
                b, lam, used = self.kept_eigenpairs(terms, t1, y_predict, args)
                return b, lam, hessians + 1, products + used

            basis, curvature, hessians, products = jax.lax.cond(
                (tries > 0) | renew_first, renew, lambda: (basis, curvature, hessians, products))
            result = self._newton(terms, t1, y_predict, c, psi, scale, basis, curvature, args)
            return basis, curvature, hessians, products + result[4], tries + 1, total + result[1], result[:4]

        def again(carry):  # a second try only with a Hessian fresher than the first's
            tries, converged = carry[4], carry[6][0]
            return (tries == 0) | ((tries == 1) & ~converged & ~renew_first)

        zero = jnp.zeros((), jnp.int32)
        first = (jnp.zeros((), bool), zero, y_predict, y_predict)
        basis, curvature, hessians, products, _, iterations_total, (converged, iterations, y_new, d) = \
            jax.lax.while_loop(again, attempt, (s.basis, s.curvature, s.hessians, s.products, zero, zero, first))

        cap = min(self.newton_iterations, SAFETY_ITERATIONS)
        safety = 0.9 * (2 * cap + 1) / (2 * cap + jnp.minimum(iterations, cap).astype(h.dtype))
        exponent = 1.0 + order.astype(h.dtype)  # the error of order k is O(h^(k+1))
        scale = self.atol + self.rtol * jnp.abs(y_new)
        error_const = jnp.asarray(_ERROR_CONST)

        # The differences after the step (scipy: D[k+2] = d - D[k+1]; D[k+1] = d; D[i] += D[i+1], i <= k).
        new = differences.at[order + 2].set(d - differences[order + 1]).at[order + 1].set(d)
        new = jnp.where((rows <= order)[:, None], _tail_sums(jnp.where((rows <= order + 1)[:, None], new, 0.0)), new)

        # The kept-basis coordinates of the solution and of the three error candidates, in one pass over
        # the basis (each coordinate vector is linear in its row; E's dense run: 4 passes a step saved to 1)
        candidates = jnp.stack([y_new, d, new[order], new[order + 2]])
        new_in_basis, d_in_basis, lower_in_basis, higher_in_basis = self.in_kept_basis(basis, curvature, candidates)
        new_max = jnp.max(jnp.abs(y_new))

        def error_of(v, v_in_basis):  # the usual scaled error, and the error along unstable directions (_hessian.py)
            unstable = unstable_error_norm(v_in_basis, curvature, new_in_basis, new_max, t1, self.rtol)
            return jnp.maximum(rms(v / scale), unstable)

        error_norm = error_of(error_const[order] * d, error_const[order] * d_in_basis)
        accept = converged & (error_norm <= 1)
        reject_factor = jnp.where(converged, jnp.maximum(MIN_FACTOR, safety * error_norm ** (-1.0 / exponent)), 0.5)
        equal_steps = equal_steps + 1

        # After order + 1 equal steps, choose the order (k - 1, k, k + 1) that allows the largest step.
        def norm_at(k_err, row, row_in_basis):
            return error_of(error_const[k_err] * row, error_const[k_err] * row_in_basis)

        error_m = jnp.where(order > 1, norm_at(jnp.maximum(order - 1, 0), new[order], lower_in_basis), jnp.inf)
        error_p = jnp.where(order < MAX_ORDER, norm_at(jnp.minimum(order + 1, MAX_ORDER), new[order + 2],
                                                       higher_in_basis), jnp.inf)
        norms = jnp.stack([error_m, error_norm, error_p])
        factors = norms ** (-1.0 / (exponent - 1.0 + jnp.arange(3.0)))
        choose = equal_steps >= order + 1
        next_order = jnp.where(choose, order + jnp.argmax(factors).astype(order.dtype) - 1, order)
        accept_factor = jnp.where(choose, jnp.minimum(MAX_FACTOR, safety * jnp.max(factors)), 1.0)
        equal_steps = jnp.where(choose, 0, equal_steps)

        y1 = jnp.where(accept, y_new, y0)
        wanted_h = h * jnp.where(accept, accept_factor, reject_factor)
        limit = unstable_step_limit(curvature)
        renewed = hessians > s.hessians
        kept_steps = jnp.where(renewed, 0, s.kept_steps) + 1
        # A renewal for the limit that did not relax it (the limit binds with a current Hessian, or the
        # deviation is exactly zero) doubles the wait before the next; any other renewal restores it.
        relaxed = limit > 2.0 * unstable_step_limit(s.curvature)
        patience = jnp.where(renew_first & ~relaxed, jnp.minimum(2 * s.patience, MAX_PATIENCE),
                             jnp.where(renewed, STALE_LIMIT_STEPS, s.patience))
        state = _State(new, h, next_order, equal_steps, basis, curvature, kept_steps, wanted_h > limit, patience,
                       hessians, s.gradients + iterations_total, products)
        next_h = jnp.minimum(wanted_h, limit)
        dense_info = dict(differences=new[: MAX_ORDER + 1], order=order, h=h)
        work = jnp.stack([hessians - s.hessians, iterations_total, products - s.products]).astype(h.dtype)
        decision = StepDecision(accept=accept.astype(h.dtype), next_step=next_h, work=work)
        return y1, decision, dense_info, state, diffrax.RESULTS.successful
