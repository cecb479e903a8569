"""The run record: every trajectory knows how it was made, its file keeps that, and old files load."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import gflow

DATA = os.path.join(os.path.dirname(__file__), "data")


def small_flow(setting, **kw):
    spec, config, p0 = setting
    kw = {"loss": "counts", "n_save": 6, "progress": False, **kw}
    return gflow.simulate(p0, spec, (0.0, 20.0), config=config, **kw)


def test_a_sampled_flow_is_analysed_and_compared_on_its_own_loss(small_setting):
    """Analysis and comparison rebuilt the loss from a settings dict without `n_samples` and `key`,
    so a sampled flow was linearised and re-solved on another sample (4096 sequences, seed 0)."""
    spec, config, p0 = small_setting
    key = jax.random.key(3)
    flow = small_flow(small_setting, loss="sampled", n_samples=64, key=key)
    own = gflow.loss_function(spec, config, "sampled", n_samples=64, key=key)
    assert float(flow.loss_function()(flow.final_params)) == pytest.approx(flow.loss[-1], rel=1e-12)
    assert float(own(flow.final_params)) == pytest.approx(flow.loss[-1], rel=1e-12)
    # Sharpness (Lanczos on the trajectory's loss) against the dense Hessian of the run's own sample.
    y = flow.flat_params()[-1]
    hessian = np.asarray(gflow.analysis.dense_hessian(own, flow.layout, y))
    assert gflow.analysis.sharpness(flow, [len(flow) - 1])[0] == pytest.approx(np.linalg.eigvalsh(hessian)[-1],
                                                                               rel=1e-8)
    gd = gflow.train(p0, spec, config, optimizer="gd", lr=0.5, steps=40, loss=flow.record.loss, n_save=6)
    comparison = gflow.compare(flow, gd, n_sharpness=2)
    # The re-solved reference flow ends where the flow itself ended (same loss, same solver).
    assert comparison.flow_loss[-1] == pytest.approx(flow.loss[-1], rel=1e-6)
    # Events detected once can be handed in; they are the ones the comparison matches.
    given = gflow.compare(flow, gd, n_sharpness=2, flow_events=comparison.flow_events)
    assert given.flow_events is comparison.flow_events and given.event_shifts == comparison.event_shifts
    with pytest.raises(ValueError, match="share the data source, the config and the loss"):
        gflow.compare(flow, gflow.train(p0, spec, config, optimizer="gd", lr=0.5, steps=40, loss="counts", n_save=6))


def test_the_file_keeps_the_whole_record(small_setting, tmp_path):
    spec, config, p0 = small_setting
    labelled = gflow.MarkovSpec.from_matrix(spec.P, spec.T, spec.init, labels=("a", "b", "c"))
    flow = small_flow((labelled, config, p0), loss="sampled", n_samples=32, key=7, solver="Kvaerno4",
                      max_steps=5000)
    flow.save(tmp_path / "t.npz")
    with np.load(tmp_path / "t.npz") as f:
        meta = json.loads(str(f["meta"]))
    assert meta["format"] == 2 and meta["record"]["source"]["order"] == 1
    back = gflow.load(tmp_path / "t.npz")
    assert back.spec.to_json() == labelled.to_json() and back.spec.labels == ("a", "b", "c")
    assert back.record.loss == flow.record.loss and back.record.solver == flow.record.solver
    assert back.settings == flow.settings and back.settings["max_steps"] == 5000
    np.testing.assert_array_equal(back.record.save_times, flow.record.save_times)
    assert float(back.loss_function()(back.final_params)) == pytest.approx(flow.loss[-1], rel=1e-12)
    # The loss cache is keyed on the source's whole serialisation.
    assert json.loads(labelled.cache_key())["order"] == 1


def test_a_dataset_loss_keeps_its_sequences_in_the_file(small_setting, tmp_path):
    spec, config, p0 = small_setting
    data = np.asarray(spec.sample(jax.random.key(5), 16))
    flow = small_flow(small_setting, loss="dataset", dataset=data)
    flow.save(tmp_path / "d.npz")
    back = gflow.load(tmp_path / "d.npz")
    np.testing.assert_array_equal(back.record.loss.dataset, data)
    assert float(back.loss_function()(back.final_params)) == pytest.approx(flow.loss[-1], rel=1e-12)


@pytest.mark.parametrize("name", ["v1_flow_counts", "v1_flow_sampled", "v1_train_gd", "v1_ensemble_member"])
def test_files_of_format_1_load_with_their_exact_loss(name):
    traj = gflow.load(os.path.join(DATA, name + ".npz"))
    fn = traj.loss_function()
    np.testing.assert_allclose([float(fn(traj.params_at(i))) for i in range(len(traj))], traj.loss, rtol=1e-12)
    kind = {"v1_train_gd": "discrete", "v1_ensemble_member": "ensemble"}.get(name, "flow")
    assert traj.record.kind == kind and traj.ok
    if name == "v1_flow_sampled":  # written with n_samples=64 and key(3)
        assert traj.record.loss.n_samples == 64
        assert traj.record.loss.key == tuple(np.asarray(jax.random.key_data(jax.random.key(3))).tolist())


def test_a_checkpoint_of_format_1_resumes_to_the_uninterrupted_run(small_setting, tmp_path):
    path = tmp_path / "ck.npz"
    shutil.copy(os.path.join(DATA, "v1_interrupted.npz"), path)
    resumed = gflow.resume(path, progress=False)
    spec, config, p0 = small_setting  # the file was written from this setting, 9 saves in chunks of 2
    # on the file's own grid: numpy 2.4's logspace differs from the one that wrote it by an ulp at one time
    whole = gflow.simulate(p0, spec, (0.0, 20.0), config=config, loss="counts",
                           save_times=resumed.record.save_times[1:], chunk_size=2, progress=False,
                           solver=resumed.record.solver.name)
    assert resumed.ok and np.array_equal(resumed.times, whole.times)
    np.testing.assert_array_equal(resumed.loss, whole.loss)
    np.testing.assert_array_equal(resumed.flat_params(), whole.flat_params())


def test_a_trajectory_from_foreign_states_gets_the_records_loss(small_setting):
    flow = small_flow(small_setting)
    copy = gflow.Trajectory.from_flat(flow.record, flow.times, flow.flat_params())
    np.testing.assert_allclose(copy.loss, flow.loss, rtol=1e-13)
    np.testing.assert_allclose(copy.grad_norm, flow.grad_norm, rtol=1e-10)
    with pytest.raises(ValueError, match="`ys` must have shape"):
        gflow.Trajectory.from_flat(flow.record, flow.times, flow.flat_params()[:, :-1])


def test_importing_gflow_leaves_matplotlib_alone():
    code = ("import sys, matplotlib; matplotlib.use('svg'); import gflow; "
            "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend(); "
            "assert 'matplotlib.pyplot' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_the_status_is_read_from_the_metadata_alone(small_setting, tmp_path):
    """`read_status` (what `gflow run` asks of a folder's old trajectory) agrees with `load`, and says
    `None` for a file it cannot read, where `load` says why."""
    import dataclasses

    from gflow.record import read_status

    traj = small_flow(small_setting)
    traj.save(tmp_path / "done.npz")
    dataclasses.replace(traj, status="interrupted").save(tmp_path / "cut.npz")
    assert read_status(tmp_path / "done.npz") == gflow.load(tmp_path / "done.npz").status == "success"
    assert read_status(tmp_path / "cut.npz") == gflow.load(tmp_path / "cut.npz").status == "interrupted"
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    assert read_status(tmp_path / "bad.npz") is None and read_status(tmp_path / "missing.npz") is None
    with pytest.raises(ValueError, match="not a readable gflow trajectory"):
        gflow.load(tmp_path / "bad.npz")
