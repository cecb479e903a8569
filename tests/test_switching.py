"""The switching default: Tsit5 where the flow is not stiff, the BDF where it is (issue 23).

Its signals are checked against closed forms (stability boundaries of known tableaux, the largest
eigenvalue of a dense Hessian); its choices against flows whose stiffness is known (a short,
smooth horizon; a long plateau whose steps the largest curvature bounds); and its bookkeeping
against the rules every run keeps (resume is bit-identical across a switch, ensembles run it, a
failed explicit chunk is solved again instead of failing the run).
"""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gflow
import gflow.flow._plan as plan_module
from gflow.solvers import SWITCHING_SOLVER, Tsit5UntilStiff, largest_curvature, stability_boundary
from gflow.solvers._base import pid_controller
from gflow.solvers._explicit import STIFF_STEPS, _watch_constants

BDF = "GradientFlowBDF"


def test_the_implicit_cost_counts_each_product_as_the_solver_takes_it():
    """The switch back to Tsit5 weighs the BDF's work per step in gradients, as each BDF counts it
    (closed forms of the counters): a dense Hessian as n exact products; the Krylov solver's Lanczos
    renewals as exact products and its Newton products as one gradient each when they are differences,
    as exact ones otherwise."""
    from gflow.solvers import GradientFlowBDF, GradientFlowKrylovBDF, implicit_step_cost
    from gflow.solvers._bdf import EXACT_PRODUCT_COST as exact
    from gflow.solvers._krylov import LANCZOS_STEPS

    work = {"num_gradient_evaluations": 300, "num_hessian_evaluations": 2,
            "num_hessian_vector_products": 2 * LANCZOS_STEPS + 1000}
    tolerances = dict(rtol=1e-6, atol=1e-9)
    dense, krylov = GradientFlowBDF(**tolerances), GradientFlowKrylovBDF(**tolerances)
    exact_krylov = GradientFlowKrylovBDF(**tolerances, difference_products=False)
    lanczos = 2 * LANCZOS_STEPS
    assert implicit_step_cost(work, 100, dense, 50) == (300 + exact * 50 * 2) / 100
    assert implicit_step_cost(work, 100, krylov, 5000) == (300 + exact * lanczos + 1000) / 100
    assert implicit_step_cost(work, 100, exact_krylov, 5000) == (300 + exact * (lanczos + 1000)) / 100


@pytest.fixture(scope="module")
def demo():
    spec = gflow.MarkovSpec.sticky((0.75, 0.19, 0.05, 0.01), 0.5, T=10)
    config = gflow.TransformerConfig(d_model=8)
    return spec, config, gflow.init_params(0, config, spec, scale=1e-3)


@pytest.fixture(scope="module")
def long_runs(demo):
    """The demo flow to t = 1e5 under the switching default and under the BDF alone."""
    return run(demo, 1e5), run(demo, 1e5, solver=BDF)


def run(setting, t1, **kw):
    spec, config, p0 = setting
    return gflow.simulate(p0, spec, (0.0, t1), config=config, loss="meanfield", progress=False, **kw)


def test_stability_boundaries_of_known_tableaux():
    """Heun's R(z) = 1 + z + z^2/2 is stable on [-2, 0]; Dopri5's boundary is 3.3066 and the classical
    RK4's 2.7853 (Hairer & Wanner, Solving ODEs II, fig. IV.2.1)."""
    assert stability_boundary(diffrax.Heun.tableau) == pytest.approx(2.0, abs=2e-4)
    assert stability_boundary(diffrax.Dopri5.tableau) == pytest.approx(3.3066, abs=2e-4)
    rk4 = diffrax.ButcherTableau(c=np.array([0.5, 0.5, 1.0]), b_sol=np.array([1, 2, 2, 1]) / 6,
                                 b_error=np.zeros(4), a_lower=(np.array([0.5]), np.array([0.0, 0.5]),
                                                               np.array([0.0, 0.0, 1.0])))
    assert stability_boundary(rk4) == pytest.approx(2.7853, abs=2e-4)


def test_largest_curvature_is_the_hessians_largest_eigenvalue(demo):
    """Lanczos from below, against eigvalsh of the dense Hessian, at a state after condensation."""
    spec, config, _ = demo
    traj = run(demo, 2000.0, n_save=5)
    field = gflow.GradientField(gflow.loss_function(spec, config, "meanfield"), traj.record.layout)
    y = jnp.asarray(traj.flat_params()[-1])
    exact = np.abs(np.linalg.eigvalsh(np.asarray(jax.hessian(field.value)(y)))).max()
    estimate = float(largest_curvature(field, y))
    assert estimate <= exact * (1 + 1e-9) and estimate == pytest.approx(exact, rel=0.05)


def test_explicit_on_a_smooth_horizon_and_the_bdf_on_a_plateau(demo, long_runs):
    """t to 20 is the condensation's slow start (steps set by accuracy): every chunk explicit. To
    t = 1e5 the flow sits on long plateaus where Tsit5's steps are held at 3.5 / lambda_max: the
    later chunks are the BDF's, and the run ends where the BDF alone ends."""
    short = run(demo, 20.0)
    assert short.ok and short.record.solver.name == SWITCHING_SOLVER
    assert set(short.stats["chunk_methods"]) == {"Tsit5"}
    assert short.stats["method_steps"]["GradientFlowBDF"] == 0
    long, bdf = long_runs
    methods = long.stats["chunk_methods"]
    assert long.ok and methods[0] == "Tsit5" and methods[-1] == BDF, methods
    assert sum(long.stats["method_steps"].values()) == (long.stats["num_accepted_steps"]
                                                       + long.stats["num_rejected_steps"])
    assert set(long.stats["method_wall_time_s"]) == {"Tsit5", BDF}
    assert long.loss[-1] == pytest.approx(bdf.loss[-1], abs=1e-6)
    assert np.all(np.diff(long.loss) <= 1e-9 * np.abs(long.loss[1:]))


def test_resume_across_a_switch_is_bit_identical(demo, long_runs, tmp_path, interrupt_chunk):
    whole = long_runs[0]
    switch = whole.stats["chunk_methods"].index(BDF)
    interrupt_chunk(switch + 2)  # after the first BDF chunk
    part = run(demo, 1e5, checkpoint=tmp_path / "ck.npz")
    interrupt_chunk(None)
    assert part.status == "interrupted" and part.stats["chunk_methods"] == whole.stats["chunk_methods"][:switch + 1]
    resumed = gflow.resume(tmp_path / "ck.npz", progress=False)
    assert resumed.ok and resumed.stats["chunk_methods"] == whole.stats["chunk_methods"]
    assert np.array_equal(resumed.flat_params(), whole.flat_params()) and np.array_equal(resumed.loss, whole.loss)


def test_ensembles_run_the_switching_default(demo):
    spec, config, _ = demo
    batch = gflow.stack_params([gflow.init_params(s, config, spec, scale=1e-3) for s in (0, 1)])
    many = gflow.simulate_many(batch, spec, (0.0, 3e3), config=config, loss="meanfield", progress=False)
    one = run((spec, config, gflow.init_params(1, config, spec, scale=1e-3)), 3e3)
    assert all(t.record.solver.name == SWITCHING_SOLVER for t in many)
    assert many[1].stats["chunk_methods"] == one.stats["chunk_methods"] and BDF in one.stats["chunk_methods"]
    assert np.array_equal(many[1].flat_params(), one.flat_params())


def test_a_failed_explicit_chunk_is_solved_again_by_the_bdf(demo, long_runs, monkeypatch):
    """From the converged state (largest curvature ~ 1e1), one chunk to t = 1e3 is beyond Tsit5's step
    budget (its steps held at 3.5 / lambda_max). With the stiffness watch off, the switching
    default's explicit solve stops at its own budget (`EXPLICIT_MAX_STEPS`, here 500, below the
    run's `max_steps`), the chunk is solved again with the BDF, which succeeds as the BDF alone
    does, and the discarded steps are counted."""
    monkeypatch.setattr(plan_module, "EXPLICIT_MAX_STEPS", 500)
    monkeypatch.setattr(plan_module, "Tsit5UntilStiff", lambda: Tsit5UntilStiff(stiff_steps=10**9))
    spec, config, _ = demo
    converged = (spec, config, long_runs[0].params_at(-1))
    explicit = run(converged, 1e3, solver="Tsit5", max_steps=500, save_times=[1e3])
    switching, bdf = (run(converged, 1e3, max_steps=1000, save_times=[1e3]),
                      run(converged, 1e3, solver=BDF, max_steps=1000, save_times=[1e3]))
    assert explicit.status == "max_steps" and bdf.ok
    assert switching.ok and switching.stats["chunk_methods"] == [BDF]
    assert switching.stats["num_discarded_explicit_steps"] == 500
    assert np.array_equal(switching.flat_params(), bdf.flat_params())


def test_the_explicit_method_gives_up_once_its_steps_are_held_by_stability(demo, long_runs):
    """The same chunk with the stiffness watch on (`Tsit5UntilStiff`): the chunk's end is thousands of
    stability-held steps away, so the explicit solve stops after `STIFF_STEPS` of them, far below its
    budget, and the BDF's solution is the same."""
    spec, config, _ = demo
    converged = (spec, config, long_runs[0].params_at(-1))
    switching, bdf = (run(converged, 1e3, max_steps=1000, save_times=[1e3]),
                      run(converged, 1e3, solver=BDF, max_steps=1000, save_times=[1e3]))
    assert switching.ok and switching.stats["chunk_methods"] == [BDF]
    assert STIFF_STEPS <= switching.stats["num_discarded_explicit_steps"] <= 2 * STIFF_STEPS
    assert np.array_equal(switching.flat_params(), bdf.flat_params())


@pytest.mark.parametrize("rate, budget, stops", [(0.5, 100, False), (50.0, 100, True), (400.0, 100, True),
                                                (50.0, 100_000, False)])
def test_the_stiffness_watch_on_a_linear_flow(rate, budget, stops):
    """On $\\dot y = -\\lambda y$ the two last stages give $h\\rho = h\\lambda$ exactly. The watch stops
    the solve only where stability holds the steps (not at a slow rate, whose steps accuracy sets)
    *and* the horizon lies beyond the budget at those steps (to t = 20 at $\\lambda$ = 50 a few
    hundred steps: beyond 100, within 100,000)."""
    term = diffrax.ODETerm(lambda t, y, args: -rate * y)
    solver = Tsit5UntilStiff(horizon=20.0, budget=budget)
    y0, h = jnp.ones(1), 0.01
    state = solver.init(term, 0.0, h, y0, None)
    _, _, dense, _, _ = solver.step(term, 0.0, h, y0, None, state, False)
    weights, _ = _watch_constants(Tsit5UntilStiff)
    k = dense["k"]
    estimate = float(jnp.linalg.norm(k[-1] - k[-2]) / jnp.linalg.norm(jnp.asarray(weights) @ k))
    np.testing.assert_allclose(estimate, h * rate, rtol=1e-10)
    sol = diffrax.diffeqsolve(term, solver, 0.0, 20.0, 1e-3, y0, stepsize_controller=pid_controller(1e-6, 1e-9),
                              max_steps=100_000, throw=False)
    stopped = bool(sol.result == diffrax.RESULTS.max_steps_reached)
    assert stopped == stops, (rate, budget, int(sol.stats["num_accepted_steps"]))
    if stopped:
        assert int(sol.stats["num_accepted_steps"]) < 100


def test_the_switching_name_is_refused_where_one_solver_is_built():
    with pytest.raises(ValueError, match="pair of solvers"):
        gflow.solvers.make_solver(SWITCHING_SOLVER, 1e-6, 1e-9)


def test_a_resolve_from_a_saved_state_starts_with_the_runs_own_method(demo, long_runs, monkeypatch):
    """The event re-solves retrace the run with the method it used there (`Trajectory.method_at`). From
    a state of the last, BDF, chunk, a re-solve started as a new run would spend explicit steps
    before the BDF takes the chunk over; started with the run's method it discards
    nothing and reaches the same states bit for bit. A method the switching plan lacks is refused."""
    from gflow.flow import run_record

    monkeypatch.setattr(plan_module, "EXPLICIT_MAX_STEPS", 500)
    long = long_runs[0]
    chunk = long.record.solver.chunk_size
    i = (len(long.stats["chunk_methods"]) - 1) * chunk
    assert long.method_at(i) == BDF and long.method_at(0) == "Tsit5" and long.method_at(-1) is None
    record = long.record.with_save_times(np.geomspace(long.times[i], long.times[i + 1], 5))
    fresh = run_record(record, long.params_at(i))
    own = run_record(record, long.params_at(i), method=long.method_at(i))
    assert fresh.stats["num_discarded_explicit_steps"] > 0 and fresh.stats["chunk_methods"] == [BDF]
    assert own.stats["num_discarded_explicit_steps"] == 0 and own.stats["chunk_methods"] == [BDF]
    assert np.array_equal(own.flat_params(), fresh.flat_params())
    with pytest.raises(ValueError, match="`method` must name one of"):
        run_record(record, long.params_at(i), method="Kvaerno5")
