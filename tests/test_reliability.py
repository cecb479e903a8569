"""Bad input gets a clear error (docs/reliability.md lists every class and its test), and random
malformed input never gets anything else: each public entry point either works or raises
`ValueError` with a message (a jaxtyping `TypeCheckError` under this suite's runtime type checks)."""

import dataclasses
import json
import os
import stat
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gflow
from conftest import BAD_TYPE
from gflow.app import main

SPEC = gflow.MarkovSpec.sticky((0.6, 0.3, 0.1), 0.4, T=4)
CONFIG = gflow.TransformerConfig(d_model=3)
P0 = gflow.init_params(1, CONFIG, SPEC, scale=0.3)


def with_weight(params, name, value):
    return type(params)(**{**params.__dict__, name: value})


# ----------------------------------------------------------------------------------------------
# silent nonsense


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_parameters_are_refused_up_front(bad):
    params = with_weight(P0, "W_E", P0.W_E.at[0, 0].set(bad))
    with pytest.raises(ValueError, match="`params0` holds 1 non-finite"):
        gflow.simulate(params, SPEC, (0, 1.0), config=CONFIG, progress=False)
    with pytest.raises(ValueError, match="`params0_batch` holds 1 non-finite"):
        gflow.simulate_many(gflow.stack_params([P0, params]), SPEC, (0, 1.0), config=CONFIG, progress=False)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"P": [[0.6, 0.6], [0.5, 0.5]], "init": [0.5, 0.5]}, "rows of `P` must sum to 1"),
    ({"P": [[0.5, 0.5], [0.5, 0.5]], "init": [0.2, 0.2]}, "`init` must sum to 1"),
    ({"P": [[0.5, 0.5], [0.5]], "init": [0.5, 0.5]}, "`P` must be an array of numbers"),
    ({"P": "abc", "init": [0.5, 0.5]}, "`P` must be"),
    ({"P": [[1.0]], "init": [1.0]}, "at least 2 states"),
])
def test_direct_construction_checks_the_chain(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gflow.MarkovSpec(T=3, **kwargs)


def test_direct_construction_accepts_lists():
    spec = gflow.MarkovSpec([[0.9, 0.1], [0.2, 0.8]], [0.5, 0.5], 3)
    assert spec.V == 2 and spec.P.dtype == jnp.float64 and spec.labels == ("0", "1")


def test_training_data_outside_the_vocabulary_is_refused():
    data = np.asarray(SPEC.sample(jax.random.key(0), 8)).copy()
    data[0, 0] = 3
    with pytest.raises(ValueError, match="`dataset` holds tokens outside 0..2"):
        gflow.train(P0, SPEC, CONFIG, optimizer="sgd", lr=0.1, steps=2, batch_size=2, key=0, dataset=data)
    with pytest.raises(ValueError, match="`dataset` holds tokens outside 0..2"):
        gflow.loss_function(SPEC, CONFIG, "dataset", dataset=data)


@pytest.fixture(scope="module")
def runs():
    flow = gflow.simulate(P0, SPEC, (0, 2.0), config=CONFIG, loss="meanfield", n_save=4, progress=False)
    gd = gflow.train(P0, SPEC, CONFIG, optimizer="gd", lr=0.5, steps=4, loss="meanfield", n_save=3)
    counts = gflow.train(P0, SPEC, CONFIG, optimizer="gd", lr=0.5, steps=4, loss="counts", n_save=3)
    all_positions = gflow.MarkovSpec.sticky((0.6, 0.3, 0.1), 0.4, T=4, positions="all")
    other = gflow.train(P0, all_positions, CONFIG, optimizer="gd", lr=0.5, steps=4, loss="meanfield", n_save=3)
    late = gflow.train(P0, SPEC, CONFIG, optimizer="gd", lr=5.0, steps=4, loss="meanfield", n_save=3)  # first: t = 5
    return flow, gd, counts, other, late


@pytest.mark.parametrize(("pair", "match"), [
    ((0, 4), r"no saved step within the flow's time span .* at t = lr \* step = 5, the flow ends at t = 2\)"),
    ((0, 2), "share the data source, the config and the loss"),  # meanfield flow against a counts GD run
    ((0, 3), "share the data source"),  # positions "last" against "all"
    ((0, 0), "`discrete` must be a trajectory from gflow.train; got a flow run"),
    ((1, 0), "`flow` must be a trajectory from gflow.simulate; got a discrete run"),
])
def test_compare_refuses_runs_that_do_not_match(runs, pair, match):
    with pytest.raises(ValueError, match=match):
        gflow.compare(runs[pair[0]], runs[pair[1]])


# ----------------------------------------------------------------------------------------------
# files


def _saved(tmp_path, traj, name="t.npz"):
    traj.save(tmp_path / name)
    return tmp_path / name


def _rewrite(path, change):
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    change(arrays)
    np.savez(path, **arrays)


def _set_meta(arrays, edit):
    meta = json.loads(str(arrays["meta"]))
    edit(meta)
    arrays["meta"] = np.array(json.dumps(meta))


BAD_FILES = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "corrupted": lambda p: p.write_bytes(p.read_bytes()[:100] + b"\0" * 200 + p.read_bytes()[300:]),
    "random bytes": lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)),
    "text": lambda p: p.write_text("hello, not a trajectory\n"),
    "npy": lambda p: np.save(open(p, "wb"), np.ones(3)),
    "bad JSON meta": lambda p: _rewrite(p, lambda a: a.__setitem__("meta", np.array("{not json"))),
    "missing times": lambda p: _rewrite(p, lambda a: a.pop("times")),
    "wrong W_E shape": lambda p: _rewrite(p, lambda a: a.__setitem__("param.W_E", np.ones((4, 5, 5)))),
    "non-stochastic chain": lambda p: _rewrite(p, lambda a: _set_meta(
        a, lambda m: m["record"]["source"].__setitem__("P", [[0.9, 0.9, 0.9]] * 3))),
    "unknown status": lambda p: _rewrite(p, lambda a: _set_meta(a, lambda m: m.__setitem__("status", "great"))),
}


@pytest.mark.parametrize("damage", BAD_FILES)
def test_unreadable_files_get_one_clear_error(runs, tmp_path, damage):
    path = _saved(tmp_path, runs[0])
    BAD_FILES[damage](path)
    with pytest.raises(ValueError, match="is not a readable gflow trajectory: "):
        gflow.load(path)


def test_a_directory_and_a_checkpoint_with_a_bad_chain(runs, tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        gflow.load(tmp_path)
    path = _saved(tmp_path, runs[0])
    BAD_FILES["non-stochastic chain"](path)
    with pytest.raises(ValueError, match="t.npz' is not a readable gflow trajectory: rows of `P`"):
        gflow.resume(path)


def test_files_get_the_users_permissions(runs, tmp_path):
    old = os.umask(0o022)
    try:
        mode = stat.S_IMODE(os.stat(_saved(tmp_path, runs[0])).st_mode)
    finally:
        os.umask(old)
    assert mode == 0o644


def test_unwritable_checkpoints_are_refused_before_the_run(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for path, match in ((tmp_path, "is a directory"), (blocker / "sub" / "ck.npz", "cannot write into")):
        with pytest.raises(ValueError, match=match):
            gflow.simulate(P0, SPEC, (0, 1.0), config=CONFIG, checkpoint=path, progress=False)


# ----------------------------------------------------------------------------------------------
# the command line


def test_cli_refuses_unwritable_folders_directories_and_bad_times(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["demo", "--out", str(blocker / "out")]) == 2
    assert "cannot write into" in capsys.readouterr().err
    assert main(["run", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    for t_end in ("-5", "nan"):
        assert main(["compare", "--t-end", t_end]) == 2
        assert "--t-end must be a finite number > 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as version:
        main(["--version"])
    assert version.value.code == 0 and capsys.readouterr().out.startswith("gflow ")


def test_ctrl_c_in_the_first_chunk_still_writes_the_report(tmp_path, interrupt_chunk):
    interrupt_chunk(1)
    settings = gflow.ExperimentSettings.from_dict({"chain": {"pi": [0.6, 0.3, 0.1], "T": 4}, "model": {"d_model": 3},
                                                    "flow": {"t_end": 10.0, "n_save": 11}})
    result = gflow.app.run_experiment(settings, str(tmp_path), progress=False, echo=lambda s: None)
    assert result.trajectory.status == "interrupted" and len(result.trajectory) == 1
    assert os.path.getsize(tmp_path / "attention.png") > 0 and "interrupted" in (tmp_path / "report.md").read_text()


# ----------------------------------------------------------------------------------------------
# smaller


def test_jax_jit_takes_a_loss_function():
    fn = gflow.loss_function(SPEC, CONFIG, "counts")
    assert float(jax.jit(fn)(P0)) == pytest.approx(float(fn(P0)), abs=1e-14)


def test_integer_seeds_and_numpy_scalars_are_accepted():
    assert jnp.array_equal(gflow.init_params(0, CONFIG, SPEC).W_E, gflow.init_params(jax.random.key(0), CONFIG,
                                                                                      SPEC).W_E)
    a = gflow.MarkovSpec.dirichlet(3, 3, 1.0, T=2)
    assert jnp.array_equal(a.P, gflow.MarkovSpec.dirichlet(jax.random.key(3), 3, 1.0, T=2).P)
    assert gflow.loss_function(SPEC, CONFIG, "sampled", n_samples=8, key=0).method == "sampled"
    with pytest.raises(BAD_TYPE, match="key"):
        gflow.init_params("zero", CONFIG, SPEC)
    for scale in (np.float32(0.1), jnp.asarray(0.1)):
        assert float(jnp.std(gflow.init_params(0, CONFIG, SPEC, scale=scale).W_E)) > 0


def test_ensemble_inputs_are_checked():
    other = gflow.init_params(0, gflow.TransformerConfig(d_model=4), SPEC)
    with pytest.raises(ValueError, match=r"`params_list\[1\]` does not have the shapes"):
        gflow.stack_params([P0, other])
    with pytest.raises(ValueError, match="single parameter set without a leading batch axis"):
        gflow.simulate_many(P0, SPEC, (0, 1.0), config=CONFIG)
    with pytest.raises(ValueError, match="`n_save` must be an integer > 0"):
        gflow.simulate_many(gflow.stack_params([P0]), SPEC, (0, 1.0), config=CONFIG, n_save=0)


def test_auto_respects_a_memory_budget_and_says_what_it_chose():
    long = gflow.MarkovSpec.sticky([0.25] * 4, 0.5, T=200)
    with pytest.warns(UserWarning, match=r"fell back to 'sampled' with n_samples = \d+"):
        spec = gflow.losses.loss_spec(long, gflow.TransformerConfig(d_model=8), "auto")
    assert 64 <= spec.n_samples < gflow.losses.DEFAULT_SAMPLES
    huge = gflow.MarkovSpec.sticky([0.25] * 4, 0.5, T=1_000_000)
    with pytest.raises(ValueError, match="found no method for T = 1000000.*meanfield"):
        gflow.losses.loss_spec(huge, gflow.TransformerConfig(d_model=8), "auto")


# ----------------------------------------------------------------------------------------------
# random malformed input


numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64), st.integers(-3, 3))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(numbers, min_size=1, max_size=4), min_size=0, max_size=4),
       st.lists(numbers, min_size=0, max_size=4), st.integers(-2, 6))
def test_random_chains_either_work_or_are_refused(P, init, T):
    try:
        spec = gflow.MarkovSpec(P, init, T)
    except ValueError as e:
        assert str(e)
        return
    P = np.asarray(spec.P)
    assert np.allclose(P.sum(axis=1), 1.0) and np.all(P >= 0) and spec.T >= 1


toml_values = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True),
                        st.text(max_size=8), st.lists(st.floats(0, 1), max_size=5))
sections = st.dictionaries(st.sampled_from(["chain", "model", "init", "flow", "output", "extra"]),
                           st.dictionaries(st.sampled_from(
                               ["kind", "pi", "lam", "T", "p", "q", "V", "alpha", "seed", "d_model", "n_heads",
                                "positional", "value", "scale", "gamma", "t_end", "loss", "rtol", "n_save", "solver",
                                "max_steps", "dir", "positions", "labels", "bogus"]), toml_values, max_size=4),
                           max_size=4)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sections)
def test_random_settings_either_work_or_name_the_key(raw):
    try:
        s = gflow.ExperimentSettings.from_dict(raw)
    except ValueError as e:
        assert str(e).startswith("settings: ")
        return
    spec, config, run = s.build()
    assert run["t_end"] > 0 and spec.T >= 1


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=2000), st.booleans())
def test_random_bytes_are_not_trajectories(tmp_path, data, as_zip):
    path = tmp_path / "x.npz"
    if as_zip:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("meta.npy", data)
    else:
        path.write_bytes(data)
    with pytest.raises(ValueError, match="is not a readable gflow trajectory"):
        gflow.load(path)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(["W_E", "W_Q", "W_K", "W_U"]), st.sampled_from([np.nan, np.inf, -np.inf, 1e300, 0.0, None]),
       st.sampled_from(["ok", "shape", "dtype"]))
def test_random_parameters_either_flow_or_are_refused(name, value, form):
    w = getattr(P0, name)
    if form == "shape":
        w = jnp.ones(w.shape[:-1] + (w.shape[-1] + 1,))
    elif form == "dtype":
        w = w.astype(jnp.int32)
    if value is not None:
        w = w.at[(0,) * w.ndim].set(value) if jnp.issubdtype(w.dtype, jnp.floating) else w
    try:
        traj = gflow.simulate(with_weight(P0, name, w), SPEC, (0, 0.5), config=CONFIG, loss="meanfield", n_save=3,
                              progress=False)
    except BAD_TYPE as e:
        assert str(e)
        return
    assert not traj.ok or np.all(np.isfinite(traj.loss)), (traj.status, traj.loss)


def test_numpy_and_jax_scalars_in_a_config_are_plain_numbers():
    """`TransformerConfig(d_model=np.int64(4))` passed its check and then failed inside JAX's
    `random.normal` (a traced shape): its fields are static and become Python numbers."""
    config = gflow.TransformerConfig(d_model=np.int64(4), n_heads=np.int32(2), mlp=np.int64(8),
                                     attn_scale=jnp.asarray(0.5, jnp.float32))
    assert (config.d_model, config.n_heads, config.mlp) == (4, 2, 8) and type(config.d_model) is int
    assert config.attn_scale == 0.5 and type(config.attn_scale) is float
    assert gflow.init_params(0, config, SPEC, scale=0.1).W_E.shape == (3, 4)
    plain = gflow.TransformerConfig(residual=np.bool_(True), d_model=np.array(4))
    assert plain.residual is True and plain.d_model == 4 and type(plain.d_model) is int
    for bad in (dict(d_model=np.float64(4.0)), dict(attn_scale=True), dict(n_heads=np.bool_(True))):
        with pytest.raises(ValueError, match=next(iter(bad))):
            gflow.TransformerConfig(**bad)


def test_the_analysis_names_a_trajectory_it_cannot_read():
    with pytest.raises(BAD_TYPE, match="Trajectory"):
        gflow.analysis.detect_stages(None)
    traj = gflow.simulate(P0, SPEC, (0.0, 10.0), config=CONFIG, n_save=5, progress=False)
    overflowed = dataclasses.replace(traj, loss=np.concatenate([traj.loss[:2], [np.inf], traj.loss[3:]]))
    with pytest.raises(ValueError, match=r"2 saved point\(s\) with a finite loss.*traj.head\(2\)"):
        gflow.analysis.detect_stages(overflowed)
    overflowed_start = gflow.simulate(gflow.init_params(0, CONFIG, SPEC, scale=1e200), SPEC, (0.0, 10.0),
                                      config=CONFIG, n_save=5, progress=False)
    assert overflowed_start.status == "nonfinite"
    prediction = gflow.analysis.predict_escape(overflowed_start)  # before: LinAlgError from eigvalsh
    assert prediction.failure == "the loss or its gradient is not finite at the state" and prediction.saddle_index == -1
    head = traj.head(3)
    assert len(head) == 3 and head.params.W_E.shape[0] == 3 and head.record is traj.record
    with pytest.raises(ValueError, match="`n`"):
        traj.head(0)


def test_init_params_names_a_config_and_a_spec_passed_the_other_way_round():
    from gflow.model._params import check_config_and_source

    with pytest.raises(ValueError, match="swapped"):  # the check itself (the suite's type checks come first)
        check_config_and_source(SPEC, CONFIG)
    with pytest.raises(ValueError, match="`spec` must be a data source"):
        check_config_and_source(CONFIG, None)
    with pytest.raises(BAD_TYPE, match="config"):
        gflow.init_params(0, SPEC, CONFIG)
