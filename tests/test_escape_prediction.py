"""A-priori escape predictions: the saddle located by Newton, a prediction made from a run cut off on
its plateau that the full run then confirms, no bias from where the plateau is entered, and honest
failures where the linear picture does not hold."""

import numpy as np
import pytest

import gflow
from conftest import BAD_TYPE
from gflow.analysis import detect_stages, locate_critical_point, plateau_linearization, predict_escape

SPEC = gflow.MarkovSpec.sticky((0.5, 0.3, 0.2), 0.6, T=8)
CONFIG = gflow.TransformerConfig(d_model=4)
PARAMS0 = gflow.init_params(3, CONFIG, SPEC, scale=1e-3)


@pytest.fixture(scope="module")
def full_run():
    traj = gflow.simulate(PARAMS0, SPEC, (0.0, 3e3), config=CONFIG, loss="meanfield", progress=False)
    return traj, detect_stages(traj)


def test_newton_finds_the_origin_saddle_of_a_small_initialisation(full_run):
    traj, _ = full_run
    cp = locate_critical_point(traj.loss_function(), traj.layout, traj.flat_params()[0])
    # a small initialisation sits by the critical set of uniform predictions (W_E W_U = 0 up to the
    # logit shifts that softmax ignores); Newton lands on it: the loss there is the loss of zero
    # parameters, and its Hessian is the bilinear coupling of W_E and W_U, with eigenvalues +-sigma
    assert cp.converged and cp.gradient_norm < 1e-12
    zero = traj.loss_function()(traj.layout.unflatten(np.zeros(traj.layout.size)))
    assert cp.loss == pytest.approx(float(zero), abs=1e-9)
    assert cp.eigenvalues[0] == pytest.approx(-cp.eigenvalues[-1], rel=1e-4)
    assert cp.eigenvalues[0] < 0  # a saddle


def test_a_search_reused_at_another_slow_rate_is_the_search_run_at_it(full_run):
    # the slow-rate fixed point asks Newton again with a new rate; where the rate moves no eigenvalue
    # across it, the old search is the new one (same steps): reusing it must give what running gives
    traj, _ = full_run
    fn, layout = traj.loss_function(), traj.layout
    y = traj.flat_params()[len(traj) // 3]
    cp = locate_critical_point(fn, layout, y, slowest_rate=1e-3)
    seen = np.abs(np.concatenate(cp.spectra_seen))
    assert len(cp.spectra_seen) == cp.iterations + 1
    gap = seen[seen > 1e-3].min()  # the nearest curvature above the rate: a rate below it splits alike
    same_rate = 1e-3 + 0.5 * (gap - 1e-3)
    reused, ran = cp.at_slowest_rate(same_rate), locate_critical_point(fn, layout, y, slowest_rate=same_rate)
    assert reused is not None and reused.slowest_rate == same_rate
    np.testing.assert_array_equal(reused.y, ran.y)
    assert (reused.iterations, reused.gradient_norm, reused.converged) == (ran.iterations, ran.gradient_norm,
                                                                           ran.converged)
    assert cp.at_slowest_rate(1.01 * gap) is None  # that rate leaves a direction Newton solved for


def test_a_run_cut_off_on_its_plateau_predicts_the_escape_the_full_run_shows(full_run):
    traj, events = full_run
    observed = next(e.time for e in events if e.kind == "escape")
    cut = gflow.simulate(PARAMS0, SPEC, (0.0, 0.4 * observed), config=CONFIG, loss="meanfield", progress=False)
    p = predict_escape(cut)  # from the cut run's last state; it has seen nothing later
    assert p.failure is None
    assert p.predicted_escape - cut.times[-1] == pytest.approx(observed - cut.times[-1], rel=0.05)


def test_the_prediction_does_not_depend_on_where_the_plateau_is_entered(full_run):
    # measured against the state at the plateau's slowest point the old estimate ran 23-99% long
    traj, events = full_run
    row = plateau_linearization(traj, events)[0]
    assert row.ratio == pytest.approx(1.0, abs=0.15)
    later = predict_escape(traj, float(traj.times[row.prediction.at < traj.times][5]))
    assert later.predicted_escape == pytest.approx(row.predicted_escape, rel=0.02)


def test_no_prediction_at_a_minimum_and_the_reason_is_given():
    spec = gflow.MarkovSpec.sticky((0.6, 0.4), 0.5, T=4)
    config = gflow.TransformerConfig(d_model=2)
    traj = gflow.simulate(gflow.init_params(0, config, spec, scale=0.5), spec, (0.0, 2e3), config=config,
                          loss="meanfield", progress=False)
    p = predict_escape(traj)
    assert np.isnan(p.predicted_escape) and "negative curvature" in p.failure


def test_bad_arguments_name_themselves(full_run):
    traj, _ = full_run
    with pytest.raises(ValueError, match="`at`"):
        predict_escape(traj, 1e9)
    with pytest.raises(BAD_TYPE, match="traj"):
        predict_escape(traj.params)
    with pytest.raises(ValueError, match="`y0`"):
        locate_critical_point(traj.loss_function(), traj.layout, np.zeros(3))


def test_a_discrete_run_is_refused_and_a_large_model_says_why_it_gets_no_prediction():
    gd = gflow.train(PARAMS0, SPEC, CONFIG, optimizer="gd", lr=0.1, steps=20, n_save=5, loss="meanfield",
                     progress=False)
    with pytest.raises(ValueError, match="discrete run"):
        predict_escape(gd)
    with pytest.raises(ValueError, match="discrete run"):
        plateau_linearization(gd)
    big = gflow.TransformerConfig(d_model=32)  # 2 V d + 2 d^2 = 2,240 parameters, above the dense limit
    run = gflow.simulate(gflow.init_params(0, big, SPEC, scale=1e-3), SPEC, (0.0, 1e-3), config=big,
                         loss="meanfield", solver="Tsit5", n_save=2, progress=False)
    p = predict_escape(run)
    assert np.isnan(p.predicted_escape) and "parameters" in p.failure
