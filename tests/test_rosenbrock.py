"""GradientFlowRosenbrock: its order with fresh and with stale Hessians, and the tolerances of an instance
(agreement with a tight reference: test_solvers.py)."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gflow
from gflow.solvers import GradientFlowRosenbrock

# A non-quadratic loss with curvature that changes along the path: log-cosh of a coupled linear map.
COUPLING = jnp.array([[2.0, 0.3, 0.0], [0.3, 1.0, 0.5], [0.0, 0.5, 5.0]])


def loss(y):
    return jnp.sum(jnp.log(jnp.cosh(COUPLING @ y))) + 0.05 * jnp.sum(y**2) ** 2


TERM = diffrax.ODETerm(lambda t, y, args: -jax.grad(loss)(y))
Y0 = jnp.array([1.0, -2.0, 0.7])


def endpoint(solver, n_steps):
    return diffrax.diffeqsolve(TERM, solver, 0.0, 1.0, 1.0 / n_steps, Y0,
                               stepsize_controller=diffrax.ConstantStepSize()).ys[0]


@pytest.fixture(scope="module")
def exact_endpoint():
    return diffrax.diffeqsolve(TERM, diffrax.Dopri8(), 0.0, 1.0, None, Y0, max_steps=100_000,
                               stepsize_controller=diffrax.PIDController(rtol=1e-13, atol=1e-13)).ys[0]


@pytest.mark.parametrize("max_age", [0, 10**9], ids=["fresh Hessian every step", "Hessian of y0 only"])
def test_third_order_with_fresh_and_with_stale_hessians(exact_endpoint, max_age):
    # A W-method keeps its order for any W: here W is either the exact Jacobian or the one at t = 0.
    solver = GradientFlowRosenbrock(rtol=1.0, atol=1.0, max_age=max_age, retry_above=np.inf)
    steps = np.array([20, 40, 80, 160])
    errors = [float(jnp.linalg.norm(endpoint(solver, n) - exact_endpoint)) for n in steps]
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert 2.8 < slope < 3.3, (errors, slope)


def test_embedded_estimate_is_second_order(exact_endpoint):
    solver = GradientFlowRosenbrock(rtol=1.0, atol=1.0)
    state = solver.init(TERM, 0.0, 1.0, Y0, None)
    sizes = np.array([0.02, 0.01, 0.005])
    estimates = [float(jnp.linalg.norm(solver.step(TERM, 0.0, h, Y0, None, state, False)[1])) for h in sizes]
    slope = np.polyfit(np.log(sizes), np.log(estimates), 1)[0]
    assert 2.7 < slope < 3.3  # local error of an order-2 solution: h^3


def test_an_instance_passed_to_simulate_takes_the_controller_tolerances(small_setting):
    """Its retry threshold is in units of the controller's tolerance, so the two must be the same."""
    spec, config, params0 = small_setting
    kw = dict(config=config, loss="counts", n_save=5, progress=False, rtol=1e-8, atol=1e-11)
    mine = gflow.simulate(params0, spec, (0.0, 20.0), solver=GradientFlowRosenbrock(rtol=0.5, atol=0.5), **kw)
    named = gflow.simulate(params0, spec, (0.0, 20.0), solver="GradientFlowRosenbrock", **kw)
    assert mine.ok and np.array_equal(mine.loss, named.loss)
    assert mine.stats["num_accepted_steps"] == named.stats["num_accepted_steps"]
    solver = gflow.solvers.make_solver(GradientFlowRosenbrock(rtol=0.5, atol=0.5), 1e-8, 1e-11).solver
    assert float(solver.rtol) == 1e-8 and float(solver.atol) == 1e-11
