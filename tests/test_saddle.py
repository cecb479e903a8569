"""Saddle fidelity: the solvers follow the growth of unstable deviations far below `atol`, so a flow
escapes every saddle the exact flow escapes, at the default tolerances (docs/flow.md)."""

import functools

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gflow
from gflow.solvers import make_solver

MU, LAM = 0.01, 100.0


def quadratic_saddle(t, y, args):
    """A saddle with one slow unstable direction (rate MU) and one stiff stable one (LAM)."""
    return -jax.grad(lambda y: -0.5 * MU * y[0] ** 2 + 0.5 * LAM * y[1] ** 2 + 0.1 * y[1] ** 4)(y)


@pytest.mark.parametrize("name", ["GradientFlowBDF", "GradientFlowKrylovBDF", "GradientFlowRosenbrock"])
def test_an_unstable_deviation_below_atol_grows_as_it_should(name):
    """Once the stiff direction has decayed, an implicit method takes steps with h * MU >> 1, where its
    amplification factor along the unstable direction is below one; the usual error test cannot see a
    component of 1e-12 against atol = 1e-9. Before the fix, GradientFlowBDF ended at -6.6e-13 instead
    of 4.85e-4."""
    setup = make_solver(name, 1e-6, 1e-9)
    sol = diffrax.diffeqsolve(diffrax.ODETerm(quadratic_saddle), setup.solver, 0.0, 2000.0, None,
                              jnp.array([1e-12, 1.0]), stepsize_controller=setup.controller, max_steps=100_000)
    exact = 1e-12 * np.exp(MU * 2000.0)
    assert float(sol.ys[-1, 0]) == pytest.approx(exact, rel=1e-3)


def symmetric_start(pi, eps):
    """The issue's setting: two rare tokens with equal frequency, their rows of W_E and columns of W_U
    made equal, then one entry of W_E moved by `eps`."""
    spec = gflow.MarkovSpec.sticky(pi, 0.5, T=10)
    config = gflow.TransformerConfig(d_model=8)
    p = gflow.init_params(0, config, spec, scale=1e-3)
    W_E = p.W_E.at[3].set(p.W_E[2]).at[3, 0].add(eps)
    return spec, config, gflow.TransformerParams(W_E=W_E, W_Q=p.W_Q, W_K=p.W_K, W_U=p.W_U.at[:, 3].set(p.W_U[:, 2]))


def escape_time(traj, level=1e-3):
    """When the symmetry breaking |W_E[:, 3] - W_E[:, 2]| first reaches `level` (still in the linear,
    exponential regime: log-linear interpolation on the save grid is exact there; inf if never)."""
    asym = np.abs(np.asarray(traj.params.W_E[:, 3] - traj.params.W_E[:, 2])).max(axis=1)
    above = np.flatnonzero(asym > level)
    if not above.size:
        return np.inf
    j, t = above[0], traj.times
    f = np.log(level / asym[j - 1]) / np.log(asym[j] / asym[j - 1])
    return float(t[j - 1] + f * (t[j] - t[j - 1]))


def flow(pi, eps, t_end=2e4, **kw):
    spec, config, p = symmetric_start(pi, eps)
    return gflow.simulate(p, spec, (0.0, t_end), config=config, loss="meanfield", n_save=481, progress=False,
                          max_steps=10**6, **kw)


def test_a_symmetry_broken_by_1e_10_escapes_at_the_default_tolerances():
    """At rtol 1e-6, atol 1e-9 the flow stalled at loss 0.881227 until t = 1e5 (the asymmetry decayed
    from 2e-9 to 3e-10); now it breaks the symmetry when a tight-tolerance solve does (t = 4,733) and
    reaches the entropy rate 0.832469."""
    pi = (0.6, 0.2, 0.1, 0.1)
    default, tight = flow(pi, 1e-10, t_end=1e4), flow(pi, 1e-10, t_end=1e4, rtol=1e-8, atol=1e-14)
    assert default.ok and default.loss[-1] == pytest.approx(default.spec.entropy_rate(), abs=1e-6)
    assert escape_time(default) == pytest.approx(escape_time(tight), rel=2e-3)
    assert 4000 < escape_time(tight) < 5500


@functools.cache
def explicit_escape(pi, eps):
    """An explicit method cannot damp growth (its steps are bounded by the stiff directions), so
    Dopri5 at rtol 1e-10, atol 1e-16 is an independent reference."""
    reference = flow(pi, eps, solver="Dopri5", rtol=1e-10, atol=1e-16)
    assert reference.ok
    return escape_time(reference)


DEGENERATE_CASE = ((0.4, 0.3, 0.15, 0.15), 1e-13)
DEGENERATE_REASON = "Lanczos resolves one Ritz vector per cluster of near-equal unstable eigenvalues"
"""The Krylov BDF's one miss (-0.75%; docs/flow.md): near the saddle the Hessian's unstable eigenvalues
come in clusters equal to 1e-7 (at t = 100-2,500: -0.0014451 six times), mixing the symmetric and the
antisymmetric directions, which Lanczos from one start vector resolves as one Ritz vector per
cluster; the dense `eigh` separates them. Without the unstable-direction error test the dense BDF
misses by -1.25% too."""


@pytest.mark.slow
@pytest.mark.parametrize("solver", [None, "GradientFlowBDF", "GradientFlowKrylovBDF", "GradientFlowRosenbrock"])
@pytest.mark.parametrize("pi", [(0.6, 0.2, 0.1, 0.1), (0.5, 0.3, 0.1, 0.1), (0.4, 0.3, 0.15, 0.15)])
@pytest.mark.parametrize("eps", [1e-6, 1e-10, 1e-13])
def test_escape_times_match_an_explicit_reference(pi, eps, solver, request):
    """gflow's solvers agree with the explicit reference to 0.3% at their default tolerances (`None`:
    the switching default), and end at the entropy rate."""
    if solver == "GradientFlowKrylovBDF" and (pi, eps) == DEGENERATE_CASE:
        request.applymarker(pytest.mark.xfail(strict=True, reason=DEGENERATE_REASON))
    default = flow(pi, eps, solver=solver)
    assert default.ok
    assert escape_time(default) == pytest.approx(explicit_escape(pi, eps), rel=3e-3), solver
    assert default.loss[-1] == pytest.approx(default.spec.entropy_rate(), abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("solver", [None, "GradientFlowBDF"])
@pytest.mark.parametrize("pi", [(0.45, 0.25, 0.15, 0.15), (0.5, 0.2, 0.15, 0.15)])
@pytest.mark.parametrize("eps", [1e-8, 1e-11])
def test_more_degenerate_escapes_match_an_explicit_reference(pi, eps, solver):
    """The dense BDF renews its kept Hessian mostly when Newton fails (`MIXED_NEWTON_MAXITER`,
    `MIXED_NEWTON_DIVERGENCE`), and a degenerate saddle's escape time jumps with how fresh the kept
    eigenvectors are (a divergence ratio of 4 moved one case of the test above by 0.46%). Four more
    saddles with two equal rare tokens, at deviations between those of the test above: measured within
    0.01% of the explicit reference."""
    default = flow(pi, eps, solver=solver)
    assert default.ok
    assert escape_time(default) == pytest.approx(explicit_escape(pi, eps), rel=3e-3), solver


@pytest.mark.parametrize("solver", [None, "GradientFlowKrylovBDF", "GradientFlowRosenbrock"])
def test_an_exact_stationary_start_is_integrated(solver):
    """All-zero weights are a critical point (a saddle of the demo's loss): the flow stays there, and
    the solvers must say so in a few hundred steps, not reject steps until max_steps (the 0 / 0 of
    the unstable-direction error test, whose subnormal floor XLA flushed to zero)."""
    spec = gflow.MarkovSpec.sticky((0.75, 0.19, 0.05, 0.01), 0.5, T=10)
    config = gflow.TransformerConfig(d_model=8)
    zero = jax.tree.map(jnp.zeros_like, gflow.init_params(0, config, spec, scale=1e-3))
    traj = gflow.simulate(zero, spec, (0.0, 100.0), config=config, loss="meanfield", n_save=21, progress=False,
                          solver=solver)
    assert traj.ok, traj.message
    assert np.all(traj.flat_params() == 0.0) and np.all(traj.loss == traj.loss[0])
    assert traj.stats["num_rejected_steps"] == 0 and traj.stats["num_accepted_steps"] < 1000
    with pytest.warns(UserWarning, match="underflow to 0"):
        gflow.init_params(0, config, spec, gamma=1000.0)
