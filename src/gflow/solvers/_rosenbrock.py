"""A Rosenbrock-W solver for gradient flows that keeps one symmetric eigendecomposition across steps.

For $\\dot y = f(y) = -\\nabla L(y)$ the Jacobian is $J = -H$ with $H$ the (symmetric) Hessian. A
Rosenbrock method solves one linear system with $I - h\\gamma J$ per stage instead of Newton
iterations; a *W*-method keeps its order when $J$ is replaced by any approximation $W$, so one
Hessian can serve many steps. With $W = -Q\\,\\mathrm{diag}(\\lambda)\\,Q^\\top$ (an eigendecomposition
of a Hessian taken at an earlier point), every stage is diagonal in the eigenbasis:

$$(1 + h\\gamma\\lambda) \\odot \\tilde k_i = h\\,Q^\\top f(Y_i) - h\\lambda \\odot \\textstyle\\sum_{j<i}
\\gamma_{ij}\\tilde k_j, \\qquad Y_i = y_0 + Q \\textstyle\\sum_{j<i} \\alpha_{ij} \\tilde k_j,$$

so a step costs four gradients and a few matrix-vector products, for *any* step size: no
factorisation is redone when the controller changes $h$. The Hessian is recomputed (forward-over-
reverse, then `eigh`) after `max_age` accepted steps, or at once when a step taken with the kept
one has an error far above the tolerance (`retry_above`).

The tableau is ROS34PW2 of Rang & Angermann (2005), *New Rosenbrock W-methods of order 3 for
partial differential algebraic equations of index 1*, BIT 45: four stages, order 3 for any $W$,
an embedded order-2 solution for the error estimate, L-stable and stiffly accurate. Dense output
is the cubic Hermite interpolant through $y_0, y_1, f(y_0), f(y_1)$; $f(y_1)$ is the next step's
first stage (first same as last).

The solver assumes an autonomous vector field whose Jacobian is symmetric, which is what every
gradient flow is; it is not a general-purpose ODE solver.
"""

from __future__ import annotations

from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ._base import AbstractGradientFlowSolver, pid_controller
from ._hessian import hessian_eigenbasis, unstable_error_norm, unstable_step_limit

# ROS34PW2 (Rang & Angermann 2005, table 4.1): stage coefficients alpha_ij, gamma_ij (i > j), the
# diagonal gamma, the weights b of the order-3 solution and b_hat of the embedded order-2 one.
_GAMMA = 4.3586652150845900e-01
_ALPHA = np.array([
    [0.0, 0.0, 0.0],
    [8.7173304301691801e-01, 0.0, 0.0],
    [8.4457060015369423e-01, -1.1299064236484185e-01, 0.0],
    [0.0, 0.0, 1.0],
])
_GAMMA_OFF = np.array([
    [0.0, 0.0, 0.0],
    [-8.7173304301691801e-01, 0.0, 0.0],
    [-9.0338057013044082e-01, 5.4180672388095326e-02, 0.0],
    [2.4212380706095346e-01, -1.2232505839045147e00, 5.4526025533510214e-01],
])
_B = np.array([2.4212380706095346e-01, -1.2232505839045147e00, 1.5452602553351020e00, 4.3586652150845900e-01])
_B_HAT = np.array([3.7810903145819369e-01, -9.6042292212423178e-02, 5.0e-01, 2.1793326075422950e-01])


class _State(eqx.Module):
    f0: Float[Array, " n"]  # f(y0): the first stage
    basis: Float[Array, "n n"]  # Q: eigenvectors of a Hessian taken earlier, as columns
    curvature: Float[Array, " n"]  # lambda: its eigenvalues
    age: Int[Array, ""]  # steps taken since that Hessian was computed
    hessians: Int[Array, ""]  # statistic: Hessians computed (and diagonalised) so far


class GradientFlowRosenbrock(AbstractGradientFlowSolver, diffrax.AbstractAdaptiveSolver):
    """ROS34PW2 Rosenbrock-W steps with a kept symmetric eigendecomposition of the Hessian.

    **Arguments:**

    - `rtol`, `atol`: the step controller's tolerances. With `retry_above`, the solver uses them
      to notice that a step taken with the kept Hessian would be rejected badly; it then recomputes
      the Hessian and retakes the step at once.
    - `max_age`: recompute the Hessian after this many accepted steps.
    - `retry_above`: the scaled error (1 = the controller's acceptance threshold) above which a
      step taken with a kept Hessian is retaken with a fresh one.

    The defaults come from benchmarks/solvers.py on the demo flow: one Hessian and `eigh` cost as
    much as about 30 steps, so a Hessian is worth keeping for 20 steps even though a stale one makes
    the controller take smaller steps; retrying every step that would fail triples the Hessians for
    no gain, so only steps whose error is far above the threshold (a W far from the Jacobian) retry.
    """

    dense_hessian: ClassVar[bool] = True

    rtol: Float[Array, ""] | float
    atol: Float[Array, ""] | float
    max_age: int = eqx.field(static=True, default=20)
    retry_above: float = eqx.field(static=True, default=100.0)

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar = diffrax.ThirdOrderHermitePolynomialInterpolation

    def order(self, terms) -> int:
        return 3

    def step_size_controller(self) -> diffrax.PIDController:
        return pid_controller(self.rtol, self.atol)

    def counters(self, solver_state: _State) -> dict:
        return {"num_hessian_evaluations": solver_state.hessians}

    def work_estimate(self, attempted_steps: int) -> dict[str, int]:
        # Four gradients a step (a retaken step, rare, takes four more: not counted).
        return {"stages_per_step": 4, "num_gradient_evaluations_estimate": 4 * int(attempted_steps)}

    def error_order(self, terms) -> int:
        return 3

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def _fresh(self, terms, t0, y0, args, hessians):
        return *hessian_eigenbasis(terms, t0, y0, args), jnp.zeros((), jnp.int32), hessians + 1

    def init(self, terms, t0, t1, y0, args) -> _State:
        return _State(terms.vf(t0, y0, args), *self._fresh(terms, t0, y0, args, jnp.zeros((), jnp.int32)))

    def _attempt(self, terms, t0, h, y0, f0, args, basis, curvature):
        """One ROS34PW2 step in the eigenbasis of the kept Hessian: (y1, error estimate, f(y1))."""
        scale = 1.0 / (1.0 + h * _GAMMA * curvature)
        stages = []
        f_stage = f0
        for i in range(4):
            if i > 0:
                combo = sum(_ALPHA[i, j] * stages[j] for j in range(i) if _ALPHA[i, j] != 0.0)
                f_stage = terms.vf(t0 + h * _ALPHA[i, :i].sum(), y0 + basis @ combo, args)
            rhs = h * (f_stage @ basis)
            if i > 0:
                rhs = rhs - h * curvature * sum(_GAMMA_OFF[i, j] * stages[j] for j in range(i))
            stages.append(scale * rhs)
        stacked = jnp.stack(stages, axis=1)
        y1, error = jnp.split(basis @ (stacked @ jnp.stack([_B, _B - _B_HAT], axis=1)), 2, axis=1)
        y1 = y0 + y1[:, 0]
        return y1, error[:, 0], terms.vf(t0 + h, y1, args)

    def _error_norm(self, y0, y1, error):
        scale = self.atol + self.rtol * jnp.maximum(jnp.abs(y0), jnp.abs(y1))
        ratio = jnp.sqrt(jnp.mean((error / scale) ** 2))
        return jnp.where(jnp.isfinite(ratio), ratio, jnp.inf)

    def _with_unstable_error(self, t0, t1, y0, y1, error, basis, curvature):
        """The error estimate, enlarged where needed so that the PID controller's norm of it is at least
        its norm along the unstable directions (`unstable_error_norm`), and above 1 for a step longer
        than `unstable_step_limit`: the controller then shortens the step, as `GradientFlowBDF` does
        itself."""
        usual = self._error_norm(y0, y1, error)
        too_long = ((t1 - t0) / unstable_step_limit(curvature)) ** 3  # order 3: the controller's exponent
        unstable = unstable_error_norm(error @ basis, curvature, y1 @ basis, jnp.max(jnp.abs(y1)), t1, self.rtol)
        wanted = jnp.maximum(jnp.maximum(usual, unstable), too_long)
        return error * jnp.where(usual > 0, wanted / jnp.where(usual > 0, usual, 1.0), 1.0)

    def step(self, terms, t0, t1, y0, args, solver_state: _State, made_jump):
        h = t1 - t0
        s = solver_state
        f0 = s.f0 if made_jump is False else jnp.where(made_jump, terms.vf(t0, y0, args), s.f0)
        kept = (s.basis, s.curvature, s.age, s.hessians)
        basis, curvature, age, hessians = jax.lax.cond(
            s.age >= self.max_age, lambda: self._fresh(terms, t0, y0, args, s.hessians), lambda: kept)
        y1, error, f1 = self._attempt(terms, t0, h, y0, f0, args, basis, curvature)

        def retry():
            fresh = self._fresh(terms, t0, y0, args, hessians)
            return *fresh, *self._attempt(terms, t0, h, y0, f0, args, fresh[0], fresh[1])

        stale_failure = (age > 0) & (self._error_norm(y0, y1, error) > self.retry_above)
        basis, curvature, age, hessians, y1, error, f1 = jax.lax.cond(
            stale_failure, retry, lambda: (basis, curvature, age, hessians, y1, error, f1))
        error = self._with_unstable_error(t0, t1, y0, y1, error, basis, curvature)
        dense_info = dict(y0=y0, y1=y1, k0=h * f0, k1=h * f1)
        return y1, error, dense_info, _State(f1, basis, curvature, age + 1, hessians), diffrax.RESULTS.successful
