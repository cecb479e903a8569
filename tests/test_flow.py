import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import gflow
from gflow.model import ParamLayout

T_END = 60.0


def run(setting, **kw):
    spec, config, params0 = setting
    kw.setdefault("loss", "counts")
    kw.setdefault("n_save", 25)
    return gflow.simulate(params0, spec, (0.0, kw.pop("t1", T_END)), config=config, progress=False, **kw)


def flat(traj):
    return np.asarray(jax.vmap(ParamLayout.of(traj.config, traj.spec).flatten)(traj.params))


def test_loss_never_increases_along_the_flow(small_setting):
    traj = run(small_setting)
    assert traj.ok, traj.message
    assert len(traj) == 25 and traj.times[0] == 0.0 and traj.times[-1] == T_END
    # The loss can only fall along dtheta/dt = -grad L; allow the solver's local error (rtol 1e-6).
    assert np.all(np.diff(traj.loss) <= 1e-9 * np.abs(traj.loss[1:])), np.diff(traj.loss).max()
    assert traj.loss[-1] < traj.loss[0] - 0.05
    spec, config, _ = small_setting
    np.testing.assert_allclose(
        traj.loss, [float(gflow.population_loss(traj.params_at(i), spec, config, "counts")) for i in range(len(traj))],
        rtol=1e-12)


def test_tighter_tolerance_moves_the_trajectory_less(small_setting):
    ref = flat(run(small_setting, rtol=1e-11, atol=1e-13))
    err = {rtol: np.abs(flat(run(small_setting, rtol=rtol, atol=rtol * 1e-3)) - ref).max() for rtol in (1e-4, 1e-7)}
    assert err[1e-7] < err[1e-4] / 10, err
    assert err[1e-7] < 1e-5


def test_same_inputs_give_bit_identical_results(small_setting):
    a, b = run(small_setting), run(small_setting)
    assert np.array_equal(flat(a), flat(b)) and np.array_equal(a.loss, b.loss)


def test_matches_scipy_dop853_on_the_same_vector_field(small_setting):
    spec, config, params0 = small_setting
    traj = run(small_setting, rtol=1e-10, atol=1e-12)
    layout = ParamLayout.of(config, spec)
    field = jax.jit(lambda y: gflow.GradientField(gflow.loss_function(spec, config, "counts"), layout)(0.0, y, None))
    y0 = np.asarray(layout.flatten(params0))
    ref = solve_ivp(lambda t, y: np.asarray(field(jnp.asarray(y))), (0.0, T_END), y0, method="DOP853",
                    t_eval=traj.times, rtol=1e-10, atol=1e-12)
    assert ref.success
    scale = np.abs(ref.y.T).max()
    assert np.abs(flat(traj) - ref.y.T).max() < 1e-7 * scale


def test_save_and_load_round_trip(small_setting, tmp_path):
    traj = run(small_setting)
    traj.save(tmp_path / "t.npz")
    back = gflow.load(tmp_path / "t.npz")
    assert np.array_equal(back.times, traj.times) and np.array_equal(flat(back), flat(traj))
    assert np.array_equal(back.loss, traj.loss) and np.array_equal(back.grad_norm, traj.grad_norm)
    assert back.config == traj.config and back.status == "success"
    assert np.array_equal(np.asarray(back.spec.P), np.asarray(traj.spec.P)) and back.spec.T == traj.spec.T
    assert back.settings["rtol"] == traj.settings["rtol"] and back.stats == traj.stats
    with pytest.raises(ValueError, match="does not exist"):
        gflow.load(tmp_path / "missing.npz")


def test_interrupted_then_resumed_run_equals_uninterrupted(small_setting, tmp_path, interrupt_chunk):
    whole = run(small_setting, chunk_size=4, checkpoint=tmp_path / "whole.npz")
    interrupt_chunk(3)
    part = run(small_setting, chunk_size=4, checkpoint=tmp_path / "ck.npz")
    assert part.status == "interrupted" and len(part) == 9
    interrupt_chunk(None)
    assert gflow.load(tmp_path / "ck.npz").status == "interrupted"
    resumed = gflow.resume(tmp_path / "ck.npz", progress=False)
    assert resumed.ok and np.array_equal(resumed.times, whole.times)
    assert np.array_equal(flat(resumed), flat(whole)) and np.array_equal(resumed.loss, whole.loss)
    assert gflow.load(tmp_path / "ck.npz").status == "success"


def test_chunking_agrees_with_one_chunk_to_tolerance(small_setting):
    one = flat(run(small_setting, chunk_size=24, rtol=1e-10, atol=1e-12))
    many = flat(run(small_setting, chunk_size=2, rtol=1e-10, atol=1e-12))
    assert np.abs(one - many).max() < 1e-7


def test_recorded_loss_and_gradient_norm_are_those_of_the_saved_states(small_setting):
    """Each chunk evaluates the loss once per distinct save time (its solve's slots after the last
    point repeat it): the recorded values must still be those of every saved state, and a slot the
    solve did not reach must read as not finite."""
    from gflow.flow._chunk import _at_saved_points

    spec, config, _ = small_setting
    traj = run(small_setting, chunk_size=5)  # 16 save slots a chunk, 11 of them repeats
    layout = ParamLayout.of(config, spec)
    fn = gflow.loss_function(spec, config, "counts")
    loss, grad_norm = (np.asarray(a) for a in gflow.losses.loss_and_gradient_norm(fn, layout, jnp.asarray(flat(traj))))
    np.testing.assert_allclose(traj.loss, loss, rtol=1e-13)
    np.testing.assert_allclose(traj.grad_norm, grad_norm, rtol=1e-12)

    states = flat(traj)
    # two points, the second one's time repeated, then a slot the solve did not reach
    ys = jnp.asarray(np.stack([states[3], states[7], states[7], np.full_like(states[0], np.inf)]))
    field = gflow.GradientField(fn, layout)
    got = _at_saved_points(field, jnp.asarray([1.0, 2.0, 2.0, 3.0]), ys)
    np.testing.assert_allclose(got[0][:3], loss[[3, 7, 7]], rtol=1e-13)
    np.testing.assert_allclose(got[1][:3], grad_norm[[3, 7, 7]], rtol=1e-12)
    assert np.isnan(got[0][3]) and np.isnan(got[1][3])
    # a batch (ensembles' vmapped solve) shares the save times: each member as if alone
    members = jnp.stack([ys, ys[::-1]])
    batched = jax.vmap(_at_saved_points, in_axes=(None, None, 0))(field, jnp.asarray([1.0, 2.0, 2.0, 3.0]), members)
    alone = _at_saved_points(field, jnp.asarray([1.0, 2.0, 2.0, 3.0]), ys[::-1])
    np.testing.assert_allclose(batched[0][0], got[0], rtol=1e-13)
    np.testing.assert_allclose(batched[0][1], alone[0], rtol=1e-13)
    np.testing.assert_allclose(batched[1][0], got[1], rtol=1e-12)
    np.testing.assert_allclose(batched[1][1], alone[1], rtol=1e-12)

    # and each distinct reached state is evaluated once: slots 0 and 1, not the repeat, not the unreached one
    evaluations = []

    class Counted(eqx.Module):
        def value(self, y):
            jax.debug.callback(lambda y: evaluations.append(1), y)
            return field.value(y)

    jax.block_until_ready(jax.jit(_at_saved_points, static_argnums=0)(Counted(), jnp.asarray([1.0, 2.0, 2.0, 3.0]), ys))
    assert len(evaluations) == 2


def test_solver_failure_keeps_what_was_computed(small_setting):
    traj = run(small_setting, max_steps=8, chunk_size=2)
    assert traj.status == "max_steps" and "max_steps" in traj.message
    assert 1 <= len(traj) < 25 and np.all(np.isfinite(traj.loss))
    assert np.array_equal(traj.times, gflow.default_save_times((0, T_END), 25)[: len(traj)])


def test_second_call_with_new_values_does_not_recompile(small_setting):
    spec, config, params0 = small_setting
    # compiles; a chain of its own, so that its data are built here too (the data cache could have
    # spared an earlier chain's, and with them the small programs that stage them)
    first = run((gflow.MarkovSpec.sticky((0.5, 0.3, 0.2), 0.6, T=4), config, params0), rtol=1e-5)
    # the switching default's curvature program is compiled when a chunk first takes enough explicit
    # steps to be tested (`MIN_EXPLICIT_STEPS`), which depends on the values: compile it here too
    plan = gflow.flow.RunPlan.of(first.record)
    plan.strategy.curvatures(plan, first.flat_params()[-1:])
    compiles = []

    def listener(event, duration, **kw):
        if "backend_compile" in event:
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        other_spec = gflow.MarkovSpec.sticky((0.2, 0.5, 0.3), 0.7, T=4)
        other_params = gflow.init_params(jax.random.key(9), config, other_spec, scale=0.2)
        traj = run((other_spec, config, other_params), rtol=1e-5)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert traj.ok and compiles == []


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"t1": -1.0}, "t_span"), ({"rtol": 0.0}, "rtol"), ({"rtol": 1.0}, "below 1"), ({"max_steps": 0}, "max_steps"),
     ({"save_times": [5.0, 1.0]}, "strictly increasing"), ({"save_times": [1.0, 99.0]}, "inside t_span"),
     ({"solver": "Euler"}, "adaptive"), ({"loss": "exact"}, "method")],
)
def test_simulate_rejects_bad_arguments(small_setting, kw, match):
    with pytest.raises(ValueError, match=match):
        run(small_setting, **kw)


def test_a_rising_loss_stops_the_run_with_the_points_before_it():
    """At rtol 0.5 every explicit step passed its error test while the loss went from 1.10 to 1e252,
    and the run said "success": a gradient flow's loss cannot rise, so the run stops there."""
    spec = gflow.MarkovSpec.sticky(pi=[0.6, 0.3, 0.1], lam=0.5, T=6)
    config = gflow.TransformerConfig(d_model=4)
    p0 = gflow.init_params(0, config, spec, scale=1e-2)
    traj = gflow.simulate(p0, spec, (0.0, 1e3), config=config, loss="meanfield", n_save=21, rtol=0.5,
                          solver="Tsit5", progress=False)
    assert traj.status == "solver_failure" and "the loss rose" in traj.message and "rtol 0.5" in traj.message
    assert np.all(np.diff(traj.loss) <= 0) and np.all(np.isfinite(traj.loss)) and 2 < len(traj) < 21


def test_save_times_that_end_early_still_run_to_the_end_of_t_span(small_setting):
    traj = run(small_setting, save_times=[1.0, 10.0])
    assert traj.ok and list(traj.times) == [0.0, 1.0, 10.0, T_END]
    # a grid that ends a few ulps below t1 ends at t1: no second point there (its log-time rate was 0 / 0)
    grid = np.exp(np.linspace(np.log(0.1), np.log(T_END), 30))
    assert grid[-1] < T_END
    traj = run(small_setting, save_times=grid)
    assert traj.times[-1] == T_END and traj.times[-2] < T_END * 0.9 and len(traj) == 31


def test_the_loss_rise_allowed_has_a_round_off_floor():
    from gflow.flow._loop import loss_rise_allowed

    np.testing.assert_allclose(loss_rise_allowed(np.array([1.0, 1e-20]), 1e-6, scale=1.1),
                               [1e-3, 1e3 * np.finfo(float).eps * 1.1])


def test_simulate_rejects_params_of_another_config(small_setting):
    spec, config, params0 = small_setting
    with pytest.raises(ValueError, match="W_E"):
        gflow.simulate(params0, spec, (0, 1), config=gflow.TransformerConfig(d_model=5), progress=False)


def test_default_save_grid_is_log_spaced_from_t0():
    ts = gflow.default_save_times((0.0, 1e5), 121)
    assert ts[0] == 0 and ts[1] == pytest.approx(0.1) and ts[-1] == 1e5 and len(ts) == 121
    np.testing.assert_allclose(np.diff(np.log10(ts[1:])), 6 / 119)


def test_statistics_count_hessian_assemblies_and_estimate_explicit_work(small_setting):
    implicit = run(small_setting, solver="Kvaerno4")
    s = implicit.stats
    assert s["num_hessian_evaluations"] == s["num_accepted_steps"] + s["num_rejected_steps"] > 0
    assert s["stages_per_step"] == 5  # Kvaerno4
    n_chunks = 8  # 24 save intervals in chunks of 3: each chunk starts with a fresh Hessian
    kept = run(small_setting, solver="GradientFlowRosenbrock").stats  # keeps each Hessian for many steps
    attempted = kept["num_accepted_steps"] + kept["num_rejected_steps"]
    assert n_chunks <= kept["num_hessian_evaluations"] < n_chunks + attempted / 5
    assert kept["num_gradient_evaluations_estimate"] == 4 * attempted
    bdf = run(small_setting, solver="GradientFlowBDF").stats  # a new Hessian only when Newton fails; gradients counted
    attempted = bdf["num_accepted_steps"] + bdf["num_rejected_steps"]
    assert n_chunks <= bdf["num_hessian_evaluations"] < n_chunks + attempted / 5
    # One to four Newton iterations an attempt (twice that when it renews the Hessian), one gradient each.
    assert attempted < bdf["num_gradient_evaluations"] - n_chunks <= 8 * attempted
    explicit = run(small_setting, solver="Tsit5", t1=5.0)
    e = explicit.stats
    assert "num_hessian_evaluations" not in e
    assert e["num_gradient_evaluations_estimate"] == 6 * (e["num_accepted_steps"] + e["num_rejected_steps"])


def test_default_solver_by_model_size(small_setting):
    """The switching default at every size; its stiff method the dense BDF up to DENSE_HESSIAN_LIMIT
    parameters, the matrix-free BDF above (the measured crossover); a simulate records it."""
    from gflow.solvers import DENSE_HESSIAN_LIMIT, SWITCHING_SOLVER, default_solver, stiff_solver

    spec, config, params0 = small_setting
    assert run(small_setting, t1=0.1).settings["solver"] == SWITCHING_SOLVER
    sizes = {d: gflow.ParamLayout.of(gflow.TransformerConfig(d_model=d), spec).size for d in (8, 12)}
    assert sizes == {8: 176, 12: 360} and sizes[8] <= DENSE_HESSIAN_LIMIT < sizes[12]
    assert default_solver(sizes[8]) == default_solver(sizes[12]) == SWITCHING_SOLVER
    assert stiff_solver(sizes[8]) == "GradientFlowBDF" and stiff_solver(sizes[12]) == "GradientFlowKrylovBDF"
    assert default_solver(sizes[12], ensemble=True) == "Kvaerno4" and default_solver(10**4, ensemble=True) == "Tsit5"


def test_a_solver_failure_on_a_relu_mlp_names_its_kinks():
    """A full-block run with a ReLU MLP failed at t = 2.4 with its last step at 5e-15 and no word on
    why; its message now says what makes the flow non-smooth there (the GELU twin reached its end)."""
    from gflow.flow import flow_record
    from gflow.flow._loop import failure_hint

    spec = gflow.MarkovSpec.sticky(pi=[0.7, 0.2, 0.1], lam=0.3, T=10)
    hint = {activation: failure_hint(flow_record(spec, gflow.TransformerConfig(
        d_model=4, layernorm="pre", mlp=8, activation=activation, residual=True), t_span=(0.0, 1.0)))
        for activation in ("relu", "gelu")}
    assert "ReLU MLP" in hint["relu"] and "gelu" in hint["relu"] and hint["gelu"] == ""
    from gflow.flow._chunk import ChunkResult
    from gflow.flow._loop import _Member

    member = _Member.start(0.0, np.zeros(2), 1.0, 1.0)  # a chunk that failed after its first save point
    chunk = ChunkResult(times=np.array([[1.0, np.inf]]), states=np.array([[[0.1, 0.2], [np.nan, np.nan]]]),
                        loss=np.array([[0.9, np.nan]]), grad_norm=np.array([[1.0, np.nan]]), ok=np.array([False]),
                        hit_max_steps=np.array([False]), accepted_steps=np.array([5]), rejected_steps=np.array([1]),
                        last_step=np.array([4.88e-15]), next_step=np.array([1e-15]), work={})
    assert member.add(chunk, 0, np.array([0.0, 1.0, 2.0]), 0, 2, 0.1, 100, (1e-6, 1e-9), hint["relu"]) is None
    assert member.status == "solver_failure" and list(np.concatenate(member.times)) == [0.0, 1.0]
    assert "after t = 1 " in member.message and "last accepted step was 4.88e-15" in member.message
    assert hint["relu"] in member.message


def test_a_run_stopped_at_max_steps_resumes_with_a_larger_budget(small_setting, tmp_path):
    """The max_steps message says "Raise max_steps": resume does it (and without a larger budget it says
    why it cannot continue, instead of failing at the same step again)."""
    path = tmp_path / "run.npz"
    stopped = run(small_setting, max_steps=8, chunk_size=2, checkpoint=path)  # the solve of the test above
    assert stopped.status == "max_steps" and len(stopped) < 25
    with pytest.raises(ValueError, match="with 8 it would stop there again"):  # it used to fail again
        gflow.resume(path, progress=False)
    resumed = gflow.resume(path, progress=False, max_steps=10_000)
    fresh = run(small_setting, max_steps=10_000, chunk_size=2)
    assert resumed.ok and resumed.record.solver.max_steps == 10_000
    # the failed chunk starts again with the method it started with (not the BDF it fell back to)
    assert resumed.stats["chunk_methods"] == fresh.stats["chunk_methods"]
    np.testing.assert_array_equal(flat(resumed), flat(fresh))
    with pytest.raises(ValueError, match="max_steps"):
        gflow.resume(path, max_steps=0)


def test_an_explicit_method_carries_its_step_from_chunk_to_chunk(small_setting):
    # Each chunk of the save grid is a new solve. Started with the controller's initial-step rule at
    # every chunk, Tsit5 grew its step again in each: 74 steps in 12 chunks against 50 in one (82
    # against 51 before 2026-12-07, from diffrax's fixed 0.01). Started with the step it proposed at
    # the end of the previous chunk, a boundary can cost at most the step cut short to land on it.
    one = run(small_setting, solver="Tsit5", t1=60.0, chunk_size=24)
    many = run(small_setting, solver="Tsit5", t1=60.0, chunk_size=2)
    assert one.ok and many.ok
    assert many.stats["num_accepted_steps"] <= one.stats["num_accepted_steps"] + 12
    assert many.stats["next_explicit_step"] > 0
    assert np.allclose(flat(many)[-1], flat(one)[-1], rtol=1e-4, atol=1e-6)
