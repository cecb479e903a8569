"""Discrete optimisers against the flow: GD is first order in lr, SGD's deviation grows with
lr / batch size, Adam follows another vector field."""

import jax
import numpy as np
import optax
import pytest

import gflow
from gflow.flow import save_steps

T_FIX = 20.0


@pytest.fixture(scope="module")
def setting():
    spec = gflow.MarkovSpec.sticky((0.6, 0.3, 0.1), 0.4, T=4)
    config = gflow.TransformerConfig(d_model=3)
    p0 = gflow.init_params(jax.random.key(1), config, spec, scale=0.3)
    flow = gflow.simulate(p0, spec, (0, T_FIX), config=config, loss="counts", n_save=9, rtol=1e-10, atol=1e-12,
                          progress=False)
    return spec, config, p0, flow


def final_distance(setting, **kw):
    spec, config, p0, flow = setting
    traj = gflow.train(p0, spec, config, loss="counts", n_save=4, **kw)
    return gflow.compare(flow, traj, n_sharpness=1).distance[-1], traj


def test_gd_converges_to_the_flow_linearly_in_lr(setting):
    lrs = np.array([0.4, 0.2, 0.1, 0.05])
    dist = [final_distance(setting, optimizer="gd", lr=lr, steps=int(round(T_FIX / lr)))[0] for lr in lrs]
    slope = np.polyfit(np.log(lrs), np.log(dist), 1)[0]
    assert slope == pytest.approx(1.0, abs=0.05), (slope, dist)


def test_online_sgd_deviation_grows_with_lr_over_batch(setting):
    """Diffusion approximation: SGD ~ flow + sqrt(lr / B) noise, so the distance grows with lr/B
    roughly like its square root. Averaged over 3 seeds."""

    def mean_dist(lr, B):
        return np.mean([final_distance(setting, optimizer="sgd", lr=lr, steps=int(round(T_FIX / lr)), batch_size=B,
                                       key=jax.random.key(s))[0] for s in range(3)])

    small, mid, large = mean_dist(0.05, 256), mean_dist(0.2, 64), mean_dist(0.2, 4)  # lr/B: 2e-4, 3e-3, 5e-2
    assert small < mid < large
    # 250x more lr/B -> about sqrt(250) ~ 16x more deviation; allow a factor of 3 either way.
    assert 16 / 3 < large / small < 16 * 3


def test_adam_is_not_the_gradient_flow(setting):
    d_adam, _ = final_distance(setting, optimizer="adam", lr=0.01, steps=int(T_FIX / 0.01))
    d_gd, _ = final_distance(setting, optimizer="gd", lr=0.01, steps=int(T_FIX / 0.01))
    assert d_gd < 1e-3 and d_adam > 100 * d_gd


def test_trajectory_records_steps_times_and_population_loss(setting):
    spec, config, p0, flow = setting
    traj = gflow.train(p0, spec, config, optimizer="momentum", lr=0.01, steps=100, loss="counts", n_save=6)
    assert traj.steps[0] == 0 and traj.steps[-1] == 100
    np.testing.assert_allclose(traj.times, traj.steps * 0.01 / (1 - 0.9))
    fn = gflow.loss_function(spec, config, "counts")
    assert traj.loss[-1] == pytest.approx(float(fn(traj.final_params)), rel=1e-12)
    custom = gflow.train(p0, spec, config, optimizer=optax.sgd(0.05), lr=0.05, steps=10, loss="counts", n_save=3)
    plain = gflow.train(p0, spec, config, optimizer="gd", lr=0.05, steps=10, loss="counts", n_save=3)
    np.testing.assert_array_equal(custom.loss, plain.loss)


def test_fixed_dataset_minibatches(setting, key):
    spec, config, p0, _ = setting
    data = spec.sample(key, 32)
    traj = gflow.train(p0, spec, config, optimizer="sgd", lr=0.1, steps=50, batch_size=8, key=key, dataset=data,
                       loss="counts", n_save=4)
    assert traj.ok and traj.loss[-1] < traj.loss[0]
    with pytest.raises(ValueError, match="`dataset`"):
        gflow.train(p0, spec, config, optimizer="sgd", lr=0.1, steps=5, batch_size=8, key=key, dataset=data[:, :3])


def test_save_steps_are_log_spaced_and_distinct():
    s = save_steps(10_000, 41)
    assert s[0] == 0 and s[-1] == 10_000 and np.all(np.diff(s) > 0) and s[1] == 1
    for n_save in (2, 3):  # the last save is the last step even on the shortest grids
        assert save_steps(10, n_save)[-1] == 10 and len(save_steps(10, n_save)) == n_save


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"optimizer": "lbfgs"}, "`optimizer`"), ({"lr": -1.0}, "`lr`"), ({"steps": 0}, "`steps`"),
     ({"batch_size": 4}, "`key` is required"), ({"key": jax.random.key(0)}, "set `batch_size`")],
)
def test_train_rejects_bad_arguments(setting, kw, match):
    spec, config, p0, _ = setting
    args = {"optimizer": "gd", "lr": 0.1, "steps": 5, **kw}
    with pytest.raises(ValueError, match=match):
        gflow.train(p0, spec, config, **args)


def test_compare_needs_the_same_start(setting):
    spec, config, p0, flow = setting
    other = gflow.init_params(jax.random.key(5), config, spec, scale=0.3)
    traj = gflow.train(other, spec, config, optimizer="gd", lr=0.1, steps=5, loss="counts", n_save=3)
    with pytest.raises(ValueError, match="same parameters"):
        gflow.compare(flow, traj)


def test_full_batch_gd_events_are_timed_to_one_step_by_re_running_it():
    # a coarse save grid (25 points over 600 steps) and a dense one (601 log-spaced): the first escape on
    # the coarse run, re-run between its saved points, lands on the fine run's, to a step
    spec = gflow.MarkovSpec.sticky((0.6, 0.3, 0.1), 0.4, T=4)
    config = gflow.TransformerConfig(d_model=3)
    p0 = gflow.init_params(jax.random.key(2), config, spec, scale=1e-2)
    kw = dict(optimizer="gd", lr=0.1, steps=600, loss="meanfield", progress=False)
    coarse, fine = gflow.train(p0, spec, config, n_save=25, **kw), gflow.train(p0, spec, config, n_save=601, **kw)
    first = [next(e for e in gflow.analysis.detect_stages(t) if e.kind == "escape") for t in (coarse, fine)]
    assert coarse.times[1] < first[0].time < coarse.times[-2]
    assert first[0].uncertainty <= 0.1 + 1e-12  # a step, not half a save interval
    assert first[0].time == pytest.approx(first[1].time, abs=0.2)
