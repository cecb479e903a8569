"""GradientFlowBDF: scipy's BDF method with a kept eigendecomposition, checked against scipy itself."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.integrate._ivp.bdf import compute_R

import gflow
from gflow.solvers import GradientFlowBDF, GradientFlowKrylovBDF, SolverChosenSteps
from gflow.solvers._anderson import Memory, mixed_step
from gflow.solvers._bdf import (
    NEWTON_DIVERGENCE,
    NEWTON_MAXITER,
    NEWTON_TOLERANCE,
    STALE_LIMIT_STEPS,
    _difference_rescaling,
)
from gflow.solvers._hessian import GROWTH_PER_STEP

# A stiff, non-quadratic loss whose curvature changes along the path (eigenvalues ~0.1 to ~2500).
COUPLING = jnp.array([[2.0, 0.3, 0.0], [0.3, 1.0, 0.5], [0.0, 0.5, 50.0]])


def loss(y):
    return jnp.sum(jnp.log(jnp.cosh(COUPLING @ y))) + 0.05 * jnp.sum(y**2) ** 2


def field(t, y, args):
    return -jax.grad(loss)(y)


Y0 = jnp.array([1.0, -2.0, 0.7])
TS = np.linspace(0.0, 10.0, 21)


def ours(rtol, atol, **options):
    solver = GradientFlowBDF(rtol=rtol, atol=atol, **options)
    sol = diffrax.diffeqsolve(diffrax.ODETerm(field), solver, 0.0, 10.0, None, Y0,
                              saveat=diffrax.SaveAt(ts=jnp.asarray(TS), solver_state=True, controller_state=True),
                              stepsize_controller=SolverChosenSteps(rtol=rtol, atol=atol), max_steps=100_000)
    assert sol.result == diffrax.RESULTS.successful
    return np.asarray(sol.ys), sol


def work(sol) -> dict:
    """Every attempt's work: the accepted ones' in the solver state, the rejected ones' in the controller's."""
    return gflow.solvers.solver_counters(GradientFlowBDF(rtol=1.0, atol=1.0), sol.solver_state,
                                         SolverChosenSteps(rtol=1.0, atol=1.0), sol.controller_state)


def scipy_solve(method, rtol, atol, jac=True, t_eval=TS):
    f = jax.jit(lambda y: field(0.0, y, None))
    hessian = jax.jit(jax.jacfwd(lambda y: field(0.0, y, None)))
    kw = {"jac": lambda t, y: np.asarray(hessian(y))} if jac else {}
    sol = solve_ivp(lambda t, y: np.asarray(f(y)), (0.0, 10.0), np.asarray(Y0), method=method, t_eval=t_eval,
                    rtol=rtol, atol=atol, **kw)
    assert sol.success
    return sol


@pytest.fixture(scope="module")
def exact():
    return scipy_solve("DOP853", 1e-13, 1e-15, jac=False).y.T


@pytest.mark.parametrize("order", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("factor", [0.2, 0.5, 1.0, 1.7, 10.0])
def test_difference_rescaling_equals_scipys(order, factor):
    expected = compute_R(order, factor) @ compute_R(order, 1.0)
    got = np.asarray(_difference_rescaling(jnp.asarray(order, jnp.int32), jnp.asarray(factor)))
    np.testing.assert_allclose(got[: order + 1, : order + 1], expected, rtol=1e-12, atol=1e-14 * np.abs(expected).max())
    np.testing.assert_array_equal(got[order + 1:, order + 1:], np.eye(5 - order))  # beyond the order: untouched


def test_takes_the_steps_scipys_bdf_takes(exact):
    """The same algorithm with another linear algebra (eigh instead of LU): the same Jacobians, the
    same work and accuracy, up to decisions that round-off tips the other way. scipy counts the work
    of every attempt, so gflow's counters must include the rejected ones' (measured: 235 steps and
    592 gradients against scipy's 233 and 600; the accepted attempts alone: 565). With scipy's
    cap, Newton tolerance and divergence test and its plain chord iteration; gflow's rules (CVODE's
    tolerance and test, Anderson's mixing, the longer mixed iteration) are tested below."""
    ys, sol = ours(1e-6, 1e-9, newton_iterations=NEWTON_MAXITER, newton_tolerance=None, newton_divergence=None,
                   newton_acceleration=0)
    ref = scipy_solve("BDF", 1e-6, 1e-9)
    steps = len(scipy_solve("BDF", 1e-6, 1e-9, t_eval=None).t) - 1
    counts, rejected = work(sol), int(sol.stats["num_rejected_steps"])
    # a Hessian renewed on an attempt that is then rejected goes with the attempt's state (diffrax
    # restores the state from before it), and the next attempt renews it again; scipy keeps it
    assert ref.njev <= int(counts["num_hessian_evaluations"]) <= ref.njev + rejected
    assert abs(int(sol.stats["num_accepted_steps"]) - steps) <= 0.03 * steps
    gradients = int(counts["num_gradient_evaluations"]) + 2  # scipy's count includes two for its first step size
    assert abs(gradients - ref.nfev) < 0.1 * ref.nfev, (gradients, ref.nfev)
    final_ours, final_scipy = np.abs(ys[-1] - exact[-1]).max(), np.abs(ref.y.T[-1] - exact[-1]).max()
    assert 0.5 < final_ours / final_scipy < 2, (final_ours, final_scipy)
    err_ours, err_scipy = np.abs(ys - exact).max(), np.abs(ref.y.T - exact).max()
    assert err_ours < 5 * err_scipy and err_scipy < 5 * err_ours, (err_ours, err_scipy)


def test_high_orders_are_used(small_setting):
    """At a tight tolerance a method of order <= 2 would need far more steps than Kvaerno5 (order 5).
    (Agreement with a tight reference and the kept Hessians: test_solvers.py.)"""
    spec, config, params0 = small_setting
    kw = dict(config=config, loss="counts", n_save=13, progress=False, rtol=1e-9, atol=1e-12)
    bdf = gflow.simulate(params0, spec, (0.0, 60.0), solver="GradientFlowBDF", **kw)
    kvaerno = gflow.simulate(params0, spec, (0.0, 60.0), solver="Kvaerno5", **kw)
    assert bdf.ok and bdf.settings["solver"] == "GradientFlowBDF"
    assert bdf.stats["num_accepted_steps"] < 3 * kvaerno.stats["num_accepted_steps"]


def test_cvodes_newton_tolerance_renews_fewer_hessians_at_the_same_order_of_accuracy(exact):
    """Newton stopped at a tenth of the local error bound (CVODE's rule, the Krylov BDF's default) against scipy's
    min(0.03, sqrt(rtol)): fewer Hessians and gradients, and a global error still of the order of
    the tolerance (here 4.6e-6 against scipy's rule's 9.1e-7; at rtol 1e-6 the error of either rule
    moves by such factors with the tolerance itself: 2.3e-6 at 0.003, 7.4e-7 at 0.03)."""
    scipys = dict(newton_iterations=NEWTON_MAXITER, newton_divergence=None, newton_acceleration=0)
    ys, sol = ours(1e-6, 1e-9, newton_tolerance=NEWTON_TOLERANCE, **scipys)
    ys_scipy, sol_scipy = ours(1e-6, 1e-9, newton_tolerance=None, **scipys)
    assert int(sol.solver_state.hessians) < int(sol_scipy.solver_state.hessians)
    assert int(sol.solver_state.gradients) < int(sol_scipy.solver_state.gradients)
    assert np.abs(ys - exact).max() < 10 * 1e-6 * np.abs(exact).max()


@pytest.fixture(scope="module")
def turning_chain():
    """A Dirichlet chain whose Hessian turns along the flow (the kept one fails Newton every few
    steps), with its rtol-1e-8 reference: (run, exact) where run(solver) is the flow at rtol 1e-6."""
    spec = gflow.MarkovSpec.dirichlet(jax.random.key(2), 5, 0.3, T=6)
    config = gflow.TransformerConfig(d_model=4)
    p0 = gflow.init_params(jax.random.key(2), config, spec, scale=1e-3)
    kw = dict(config=config, loss="meanfield", n_save=41, progress=False, max_steps=10**6)
    exact = gflow.simulate(p0, spec, (0.0, 3e4), solver="GradientFlowBDF", rtol=1e-8, atol=1e-11, **kw).flat_params()

    def run(solver):
        return gflow.simulate(p0, spec, (0.0, 3e4), solver=solver, **kw)

    return run, exact


def largest_relative_error(traj, exact) -> float:
    return float(np.max(np.linalg.norm(traj.flat_params() - exact, axis=1) / np.linalg.norm(exact, axis=1)))


def test_cvodes_divergence_test_renews_fewer_hessians_at_the_same_accuracy(turning_chain):
    """A kept Hessian's Newton iteration abandoned only when a correction doubles (CVODE's test, the
    Krylov BDF's default) against scipy's (no contraction, or too slow a one for the remaining iterations), on a
    gradient flow whose Hessian changes along the way: fewer renewals (measured 82 against 110 with
    the plain chord iteration; to t = 1e5 164/226 on this chain, 67/90 and 76/93 on two others) and
    the same error against a reference at rtol 1e-8 (2.6e-5 for both)."""
    run, exact = turning_chain
    runs = [run(GradientFlowBDF(rtol=1e-6, atol=1e-9, newton_iterations=NEWTON_MAXITER, newton_divergence=rule,
                                newton_tolerance=NEWTON_TOLERANCE, newton_acceleration=0))
            for rule in (NEWTON_DIVERGENCE, None)]
    cvode, scipy_rule = (r.stats["num_hessian_evaluations"] for r in runs)
    assert cvode < 0.85 * scipy_rule, (cvode, scipy_rule)
    error, error_scipy = (largest_relative_error(r, exact) for r in runs)
    assert 0.8 < error / error_scipy < 1.25 and error < 1e-4, (error, error_scipy)


def test_anderson_mixing_solves_a_linear_system_where_the_chord_iteration_diverges():
    """On a linear system, Anderson's mixing with a memory as long as the iteration is GMRES on the
    preconditioned system, shifted by one correction (Walker & Ni 2011, section 4): exact after n + 1
    corrections (to the fit's regularisation floor, 1e-10 here), with a stale inverse whose chord
    iteration diverges (contraction factor 1.78)."""
    a = jnp.array([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0]])
    b = jnp.array([1.0, -2.0, 0.5])
    stale_inverse = jnp.diag(jnp.array([0.9, 0.2, 1.5]))
    assert np.max(np.abs(np.linalg.eigvals(np.eye(3) - stale_inverse @ a))) > 1.5
    solution = np.linalg.solve(a, b)
    chord, mixed, memory = jnp.zeros(3), jnp.zeros(3), Memory.empty(3, jnp.zeros(3))
    for k in range(4):
        chord = chord + stale_inverse @ (b - a @ chord)
        step, memory = mixed_step(memory, jnp.asarray(k, jnp.int32), mixed, stale_inverse @ (b - a @ mixed),
                                  jnp.ones(3))
        mixed = mixed + step
    assert np.abs(chord - solution).max() > 1.0
    np.testing.assert_allclose(mixed, solution, rtol=0, atol=1e-9)


def test_anderson_mixing_equals_a_least_squares_reference_with_a_rotating_memory():
    """`mixed_step` with a memory of 2 over 10 corrections (the oldest difference overwritten from
    the fourth on) against Anderson's update written out with numpy's `lstsq`, on a slightly
    nonlinear fixed point with uneven error weights."""
    rng = np.random.default_rng(4)
    n, m = 6, 2
    a = rng.standard_normal((n, n))
    a = a @ a.T + n * np.eye(n)
    b, weights = rng.standard_normal(n), rng.uniform(0.5, 2.0, n)
    inverse = 1.3 * np.diag(1.0 / np.diag(a))

    def correction(x):
        return inverse @ (b - a @ x) + 0.01 * np.sin(x)

    iterates, corrections, x = [np.zeros(n)], [], np.zeros(n)
    ours, memory = jnp.zeros(n), Memory.empty(m, jnp.zeros(n))
    for k in range(10):
        r = correction(x)
        corrections.append(r)
        if k == 0:
            x = x + r
        else:
            kept = range(max(k - m, 0), k)
            d_iterates = np.stack([iterates[i + 1] - iterates[i] for i in kept], axis=1)
            d_corrections = np.stack([corrections[i + 1] - corrections[i] for i in kept], axis=1)
            gamma = np.linalg.lstsq(d_corrections / weights[:, None], r / weights, rcond=None)[0]
            x = x + r - (d_iterates + d_corrections) @ gamma
        iterates.append(x)
        step, memory = mixed_step(memory, jnp.asarray(k, jnp.int32), ours, jnp.asarray(correction(np.asarray(ours))),
                                  jnp.asarray(weights))
        ours = ours + step
        np.testing.assert_allclose(np.asarray(ours), x, rtol=1e-10, atol=1e-12 * np.abs(x).max())


def test_a_negative_anderson_memory_is_refused():
    with pytest.raises(ValueError, match="newton_acceleration"):
        GradientFlowBDF(rtol=1e-6, atol=1e-9, newton_acceleration=-1)


PREVIOUS_ITERATION = dict(newton_iterations=NEWTON_MAXITER, newton_divergence=NEWTON_DIVERGENCE,
                          newton_tolerance=NEWTON_TOLERANCE)
"""Newton's cap, divergence ratio and tolerance before the dense BDF's mixed iteration was given longer
(`MIXED_NEWTON_MAXITER`, `MIXED_NEWTON_DIVERGENCE`, `MIXED_NEWTON_TOLERANCE`)."""


def test_anderson_mixing_renews_fewer_hessians_at_the_same_accuracy(turning_chain):
    """The default mixes the last three Newton corrections (`_anderson.py`): where the kept Hessian
    has turned, the mixed iteration still converges, and the Hessian is renewed less often (measured
    50 against 83 on this chain; 117/174, 83/139 and 172/264 to t = 1e5 on three untuned chains and
    133/215 on problem E of docs/performance.md) at an error of the same order (2.2e-5 against
    1.7e-5 here; equal or smaller on the others)."""
    run, exact = turning_chain
    mixed, chord = (run(GradientFlowBDF(rtol=1e-6, atol=1e-9, newton_acceleration=m, **PREVIOUS_ITERATION))
                    for m in (3, 0))
    assert mixed.stats["num_hessian_evaluations"] < 0.75 * chord.stats["num_hessian_evaluations"]
    assert mixed.stats["num_gradient_evaluations"] < 1.2 * chord.stats["num_gradient_evaluations"]
    error, error_chord = largest_relative_error(mixed, exact), largest_relative_error(chord, exact)
    assert error < 2 * error_chord and error < 1e-4, (error, error_chord)


def test_a_longer_mixed_newton_iteration_renews_fewer_hessians_at_the_same_accuracy(turning_chain):
    """The dense BDF's mixed Newton iteration may take 12 corrections, is abandoned only when one
    grows threefold, and stops at half CVODE's tolerance (`MIXED_NEWTON_MAXITER`,
    `MIXED_NEWTON_DIVERGENCE`, `MIXED_NEWTON_TOLERANCE`), against scipy's four corrections and
    CVODE's twofold growth and tolerance: a kept Hessian that has turned is renewed less often
    (measured 32 against 50 here, 76 against 133 on problem E of docs/performance.md), for some more
    gradients (3,171 against 2,900; a gradient costs about a hundredth of a renewal), at the same error
    (2.2e-5 for both)."""
    run, exact = turning_chain
    longer, four = (run(GradientFlowBDF(rtol=1e-6, atol=1e-9, **options)) for options in ({}, PREVIOUS_ITERATION))
    assert longer.stats["num_hessian_evaluations"] < 0.8 * four.stats["num_hessian_evaluations"]
    assert longer.stats["num_gradient_evaluations"] < 1.4 * four.stats["num_gradient_evaluations"]
    error, error_four = largest_relative_error(longer, exact), largest_relative_error(four, exact)
    assert 0.8 < error / error_four < 1.25 and error < 1e-4, (error, error_four)


@pytest.mark.parametrize("solver_class", [GradientFlowBDF, GradientFlowKrylovBDF])
def test_the_step_limit_follows_the_saddle_the_flow_is_at_not_the_one_it_left(solver_class):
    """`unstable_step_limit` comes from the kept Hessian, which Newton's iteration has no reason to renew
    (the unstable curvatures hardly change $I + cH$). Here the unstable rate of $z$ falls from 0.1 to 1e-4
    as $x$ decays, and with the first Hessian kept every step stayed at $0.5 / 0.1$: 4,106 steps to
    t = 2e4 (the code before `STALE_LIMIT_STEPS`). A limit set by stale eigenpairs renews them, and the
    run takes 191 steps (the Krylov BDF, which shares the rule: 4,103 and 185). The deviation $z$, 1e-10
    and growing by a known factor, is followed to 5e-6."""
    fast, slow, a, z0, t1 = 0.1, 1e-4, 0.1, 1e-10, 2e4

    def field(t, y, args):  # the loss a x^2 / 2 - (slow + (fast - slow) x^2) z^2 / 2
        return -jax.grad(lambda y: 0.5 * a * y[0] ** 2 - 0.5 * (slow + (fast - slow) * y[0] ** 2) * y[1] ** 2)(y)

    rtol = 1e-6
    solver = solver_class(rtol=rtol, atol=rtol * 1e-3)
    sol = diffrax.diffeqsolve(diffrax.ODETerm(field), solver, 0.0, t1, None, jnp.array([1.0, z0]),
                              stepsize_controller=solver.step_size_controller(), max_steps=100_000)
    stale_steps = t1 * fast / GROWTH_PER_STEP
    assert int(sol.stats["num_accepted_steps"]) < 0.25 * stale_steps
    # x(t) = e^{-a t}, so z grows by exp(slow t + (fast - slow) (1 - e^{-2 a t}) / 2a) (the x-z coupling is z^2)
    exact = z0 * np.exp(slow * t1 + (fast - slow) * (1 - np.exp(-2 * a * t1)) / (2 * a))
    assert abs(float(sol.ys[-1, 1]) / exact - 1) < 20 * rtol


def test_a_limit_that_binds_with_a_current_hessian_is_renewed_for_rarely():
    """On an invariant subspace (the deviation exactly zero) the step limit binds for the whole run, and
    every renewal for it finds the same rate. Each such renewal doubles the wait before the next: 7
    Hessians in 2,095 steps, where renewing every `STALE_LIMIT_STEPS` took 100 (the trajectory is the
    same either way; z stays exactly 0)."""
    rate, a = 0.1, 0.1

    def field(t, y, args):  # the loss a x^2 / 2 - rate z^2 / 2: z's rate never changes
        return -jax.grad(lambda y: 0.5 * a * y[0] ** 2 - 0.5 * rate * y[1] ** 2)(y)

    solver = GradientFlowBDF(rtol=1e-6, atol=1e-9)
    sol = diffrax.diffeqsolve(diffrax.ODETerm(field), solver, 0.0, 1e4, None, jnp.array([1.0, 0.0]),
                              saveat=diffrax.SaveAt(t1=True, solver_state=True),
                              stepsize_controller=solver.step_size_controller(), max_steps=100_000)
    steps, hessians = int(sol.stats["num_accepted_steps"]), int(sol.solver_state.hessians)
    assert steps > 1e4 * rate / GROWTH_PER_STEP  # the limit did bind throughout
    assert hessians <= 2 + np.log2(steps / STALE_LIMIT_STEPS), (steps, hessians)
    assert float(sol.ys[-1, 1]) == 0.0


def test_too_small_a_step_is_reported_not_hidden():
    def blow_up(t, y, args):  # finite-time blow-up at t = 1: the step size must collapse
        return y**2

    rtol = atol = 1e-8
    sol = diffrax.diffeqsolve(diffrax.ODETerm(blow_up), GradientFlowBDF(rtol=rtol, atol=atol), 0.0, 2.0, None,
                              jnp.array([1.0]), stepsize_controller=SolverChosenSteps(rtol=rtol, atol=atol),
                              max_steps=100_000, throw=False)
    assert sol.result == diffrax.RESULTS.dt_min_reached and float(sol.ts[-1]) < 1.0


def test_pairing_with_the_wrong_controller_fails_clearly():
    """The BDF's "error" is a StepDecision: an error-based controller must refuse it, and the
    controller that obeys decisions must refuse an error estimate."""
    rtol = atol = 1e-6
    with pytest.raises(TypeError, match="SolverChosenSteps"):
        diffrax.diffeqsolve(diffrax.ODETerm(field), GradientFlowBDF(rtol=rtol, atol=atol), 0.0, 1.0, None, Y0,
                            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol))
    with pytest.raises(TypeError, match="PIDController"):
        diffrax.diffeqsolve(diffrax.ODETerm(field), diffrax.Tsit5(), 0.0, 1.0, None, Y0,
                            stepsize_controller=SolverChosenSteps(rtol=rtol, atol=atol))
    setup = gflow.solvers.make_solver("GradientFlowBDF", rtol, atol)
    assert isinstance(setup.controller, SolverChosenSteps) and float(setup.controller.rtol) == rtol
