"""GradientFlowKrylovBDF: the BDF steps with matrix-free Newton solves, against the dense solver, a
tight reference, the Lanczos eigenpairs against `eigh`, and the flow's invariants."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gflow
from gflow.solvers import GradientFlowBDF, GradientFlowKrylovBDF, SolverChosenSteps
from gflow.solvers._krylov import KRYLOV_MAX_PRODUCTS, KRYLOV_RTOL, LANCZOS_STEPS, KeptRows, lanczos_eigenpairs

N = 2 * LANCZOS_STEPS  # more parameters than Lanczos steps: the kept eigenpairs are a few of H's
_rng = np.random.default_rng(0)
_U = np.linalg.qr(_rng.normal(size=(N, N)))[0]
# A few stiff directions (curvature up to ~1e3), the rest mild, one unstable direction at the start.
_SPECTRUM = np.concatenate([[1e3, 400.0, 150.0, 60.0], np.linspace(0.05, 2.0, N - 5), [-0.5]])
COUPLING = jnp.asarray(_U @ np.diag(np.sqrt(np.abs(_SPECTRUM))))
SIGN = jnp.asarray(np.sign(_SPECTRUM))
Y0 = jnp.asarray(_rng.normal(size=N) * 0.3)
TS = np.geomspace(1e-3, 30.0, 15)


def loss(y):
    z = COUPLING.T @ y
    return 0.5 * jnp.sum(SIGN * z**2) + 0.02 * jnp.sum(y**2) ** 2  # a quartic wall keeps the saddle bounded


def field(t, y, args):
    return -jax.grad(loss)(y)


def solve(solver_cls, rtol, atol):
    solver = solver_cls(rtol=rtol, atol=atol)
    sol = diffrax.diffeqsolve(diffrax.ODETerm(field), solver, 0.0, float(TS[-1]), None, Y0,
                              saveat=diffrax.SaveAt(ts=jnp.asarray(TS), solver_state=True),
                              stepsize_controller=SolverChosenSteps(rtol=rtol, atol=atol), max_steps=100_000)
    assert sol.result == diffrax.RESULTS.successful
    return np.asarray(sol.ys), sol


@pytest.fixture(scope="module")
def reference():
    return solve(GradientFlowBDF, 1e-11, 1e-14)[0]


def test_lanczos_finds_the_extreme_eigenpairs():
    """The kept Ritz pairs are eigenpairs of H (residual below the stated tolerance), and the stiffest
    and the unstable one are among them."""
    H = np.asarray(jax.hessian(loss)(Y0))
    vectors, values = lanczos_eigenpairs(lambda v: jnp.asarray(H) @ v, N, LANCZOS_STEPS, jnp.float64)
    vectors, values = np.asarray(vectors).T, np.asarray(values)  # the pairs come as rows
    kept = np.abs(vectors).sum(axis=0) > 0
    exact = np.linalg.eigvalsh(H)
    assert kept.sum() >= 4
    residual = np.linalg.norm(H @ vectors[:, kept] - vectors[:, kept] * values[kept], axis=0)
    assert residual.max() <= 1e-3 * np.abs(exact).max()
    np.testing.assert_allclose(values[kept].max(), exact.max(), rtol=1e-10)
    np.testing.assert_allclose(values[kept].min(), exact.min(), rtol=1e-8)


def test_the_kept_columns_hold_the_unstable_pair_first_then_the_stiffest():
    """With fewer columns than Lanczos steps (`KEPT_PAIRS`), the unstable pair comes first (the error
    control needs every unstable direction), then the stiffest ones, each an eigenpair of H."""
    H = np.asarray(jax.hessian(loss)(jnp.zeros(N)))  # spectrum exactly _SPECTRUM: one unstable value
    vectors, values = lanczos_eigenpairs(lambda v: jnp.asarray(H) @ v, N, LANCZOS_STEPS, jnp.float64, 4)
    vectors, values = np.asarray(vectors).T, np.asarray(values)  # the pairs come as rows
    np.testing.assert_allclose(values, [-0.5, 1e3, 400.0, 150.0], rtol=1e-8)
    np.testing.assert_allclose(H @ vectors, vectors * values, atol=1e-6 * 1e3)


def test_agrees_with_the_dense_solver_and_the_reference(reference):
    """Same steps and error control, other linear algebra: both are within tolerance of a tight
    reference, and each 100x tighter tolerance gives at least 10x smaller error."""
    dense, _ = solve(GradientFlowBDF, 1e-6, 1e-9)
    errors = []
    for rtol in (1e-4, 1e-6):
        krylov, sol = solve(GradientFlowKrylovBDF, rtol, rtol * 1e-3)
        errors.append(np.abs(krylov - reference).max())
        assert int(sol.solver_state.products) > 0
    assert errors[1] < 5 * np.abs(dense - reference).max() + 1e-9, errors
    for loose, tight in zip(errors, errors[1:], strict=False):
        assert tight < loose / 10, errors
    values = np.asarray(jax.vmap(loss)(jnp.asarray(krylov)))
    assert np.all(np.diff(values) <= 1e-12 * np.abs(values).max())  # the loss never increases


def test_new_values_reuse_the_compiled_solve(small_setting):
    """(Agreement of a Transformer flow with a tight reference: test_solvers.py.)"""
    spec, config, params0 = small_setting
    kw = dict(config=config, loss="counts", n_save=13, progress=False, rtol=1e-8, atol=1e-11)
    krylov = gflow.simulate(params0, spec, (0.0, 60.0), solver="GradientFlowKrylovBDF", **kw)
    assert krylov.ok
    compiles = []  # new values (start, tolerances) and a finer save grid reuse the compiled solve

    def listener(event, duration, **kw):
        if "backend_compile" in event:
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        other = gflow.init_params(jax.random.key(5), config, spec, scale=0.2)
        again = gflow.simulate(other, spec, (0.0, 60.0), solver="GradientFlowKrylovBDF",
                               **{**kw, "rtol": 1e-7, "atol": 1e-10, "n_save": 25})
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert again.ok and len(again) == 25 and not compiles, compiles


@pytest.mark.parametrize("differences", [True, False], ids=["difference-products", "exact-products"])
@pytest.mark.parametrize("c, bound", [(0.01, KRYLOV_RTOL), (2.5, 1e-4)])
def test_a_newton_system_is_solved_and_its_products_counted(c, bound, differences):
    """A Krylov solve of $(I + cH)x = r$ at the saddle $y = 0$ (H's spectrum exactly `_SPECTRUM`), the
    kept pairs the unstable and the four stiff directions: with c = 0.01, $I + cH$ is definite and CG
    reaches `KRYLOV_RTOL`; with c = 2.5 it is indefinite ($1 - 2.5 \\cdot 0.5 < 0$), and one GMRES
    cycle of `KRYLOV_MAX_PRODUCTS` products on the rest (condition about 5) reaches about 1e-5. The
    products reported are the products taken (counted by a callback in the vector field). The GMRES
    branch once ran no iteration (lineax counts its setup pass as a step) and returned the kept-pairs
    guess, whose residual is O(1) here, while it reported 10 products. Both kinds of product: forward
    differences of the field (the default; the field at y is given, as Newton's iteration gives it)
    and exact `jax.jvp` ones."""
    calls = []

    def counted(t, y, args):
        jax.debug.callback(lambda: calls.append(1))
        return field(t, y, args)

    terms = diffrax.ODETerm(counted)
    solver = GradientFlowKrylovBDF(rtol=1e-6, atol=1e-9, difference_products=differences)
    y = jnp.zeros(N)
    H = np.asarray(jax.hessian(loss)(y))
    values, vectors = np.linalg.eigh(H)
    kept = np.r_[0, N - 4:N]
    basis, curvature = KeptRows.of(jnp.asarray(vectors[:, kept].T)), jnp.asarray(values[kept])  # kept pairs as rows
    rhs = jnp.asarray(_rng.normal(size=N))
    x, products = solver.solve_newton_system(terms, 0.0, y, None, c, basis, curvature, rhs, field(0.0, y, None))
    x = np.asarray(x)
    residual = np.linalg.norm(x + c * H @ x - rhs) / np.linalg.norm(rhs)
    assert residual <= bound, residual
    assert int(products) == len(calls) <= KRYLOV_MAX_PRODUCTS + 2


def test_a_coordinate_the_loss_leaves_alone_does_not_end_a_newton_solve():
    """A coordinate the loss does not depend on (a zero row and column of H) with a zero right-hand side
    there: the solve's entry-by-entry test then divides 0 by 0 at it. lineax's test read that NaN as
    converged and stopped CG after one iteration (2 products, a residual far above the tolerance);
    counted as met, the solve runs on and reaches `KRYLOV_RTOL` (the definite case of the test above)."""
    def free_field(t, y, args):  # y[0] does not enter the loss
        return field(t, y.at[0].set(0.0), args).at[0].set(0.0)

    y = jnp.zeros(N)
    H = np.asarray(jax.jacfwd(lambda x: -free_field(0.0, x, None))(y))
    values, vectors = np.linalg.eigh(H)
    kept = np.r_[0, N - 4:N]
    # exactly what they are in exact arithmetic: H leaves y[0] alone
    basis, curvature = KeptRows.of(jnp.asarray(vectors[:, kept].T).at[:, 0].set(0.0)), jnp.asarray(values[kept])
    rhs = jnp.asarray(_rng.normal(size=N)).at[0].set(0.0)
    terms = diffrax.ODETerm(free_field)
    solver = GradientFlowKrylovBDF(rtol=1e-6, atol=1e-9)
    x, products = solver.solve_newton_system(terms, 0.0, y, None, 0.01, basis, curvature, rhs,
                                             free_field(0.0, y, None))
    x = np.asarray(x)
    assert int(products) > 2
    assert np.linalg.norm(x + 0.01 * H @ x - rhs) / np.linalg.norm(rhs) <= KRYLOV_RTOL


@pytest.mark.parametrize("scale", [1e-3, 0.3, 3.0])
def test_difference_products_agree_with_exact_ones_on_a_transformer_loss(scale):
    """The Newton solves' forward-difference products against `jax.jvp` of the gradient, on a
    two-head Transformer's mean-field loss at a small, a moderate and a large parameter scale (the
    step is relative to $1 + \\|y\\|$): within $10^{-6}$ of $\\|Hv\\|$, the Krylov solves' tolerance,
    and about $\\sqrt{\\epsilon}$ in fact."""
    from gflow.solvers._krylov import _difference_product, _hessian_product

    spec = gflow.MarkovSpec.sticky((0.5, 0.3, 0.15, 0.05), 0.5, T=5)
    config = gflow.TransformerConfig(d_model=8, n_heads=2, value=True)
    layout = gflow.ParamLayout.of(config, spec)
    terms = diffrax.ODETerm(gflow.GradientField(gflow.loss_function(spec, config, "meanfield"), layout))
    y = layout.flatten(gflow.init_params(jax.random.key(3), config, spec, scale=scale))
    difference = _difference_product(terms, 0.0, y, None, terms.vf(0.0, y, None))
    exact = _hessian_product(terms, 0.0, y, None)
    for v in (jnp.asarray(_rng.normal(size=y.shape[0])), jnp.cos(jnp.arange(y.shape[0], dtype=y.dtype) * 0.3) * 1e-9):
        want = np.asarray(exact(v))
        gap = np.linalg.norm(np.asarray(difference(v)) - want) / np.linalg.norm(want)
        assert gap < 1e-6, gap
    assert not np.any(np.asarray(difference(jnp.zeros_like(y))))


def test_a_faint_deviation_along_an_unstable_direction_takes_exact_products():
    """Near a saddle whose unstable direction holds less of y than a difference step moves, the
    difference products' error would be the deviation's own size, so the solve takes exact products: its
    result is then the exact-product solver's (to rounding). With a large component the differences are
    used, and the result differs from it by about their error (~1e-8) only."""
    y_saddle = jnp.zeros(N)
    H = np.asarray(jax.hessian(loss)(y_saddle))
    values, vectors = np.linalg.eigh(H)
    kept = np.r_[0, N - 4:N]  # the unstable pair first
    basis, curvature = KeptRows.of(jnp.asarray(vectors[:, kept].T)), jnp.asarray(values[kept])
    rhs = jnp.asarray(_rng.normal(size=N))
    terms = diffrax.ODETerm(field)

    def solved(y, differences):
        solver = GradientFlowKrylovBDF(rtol=1e-6, atol=1e-9, difference_products=differences)
        return np.asarray(solver.solve_newton_system(terms, 0.0, y, None, 0.01, basis, curvature, rhs,
                                                     field(0.0, y, None))[0])

    unstable = jnp.asarray(vectors[:, 0])
    faint = 1e-12 * unstable + 1e-3 * jnp.asarray(vectors[:, N - 1])

    def gap(y):
        want = solved(y, False)
        return np.abs(solved(y, True) - want).max() / np.abs(want).max()

    assert gap(faint) < 1e-13, gap(faint)
    assert 1e-11 < gap(0.05 * unstable) < 1e-6, gap(0.05 * unstable)
