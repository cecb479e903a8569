"""Hardening II (docs/reliability.md): one writer per output folder, atomic outputs, checkpoints that
must match their settings, sizes refused before anything is allocated, and the smaller classes of
bad input; each test checks the mechanism, not one case."""

import json
import os
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gflow
from conftest import BAD_TYPE
from gflow.app import main
from gflow.common import MARKER_FILE, DiskFullError, atomic_file, claim_output_folder

SMALL = """[chain]
pi = [0.6, 0.3, 0.1]
lam = 0.5
T = 4
[model]
d_model = 3
[init]
scale = 0.001
[flow]
t_end = 100.0
n_save = 21
loss = "meanfield"
"""


def _toml(tmp_path, text=SMALL, name="small.toml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# ----------------------------------------------------------------------------------------------
# one writer per folder; foreign folders; checkpoints that belong to their settings


def test_a_second_run_into_a_folder_in_use_is_refused_naming_the_process(tmp_path, capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom gflow.common import claim_output_folder\n"
                               f"with claim_output_folder({str(out)!r}):\n    print('held', flush=True)\n"
                               "    time.sleep(60)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["run", _toml(tmp_path), "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "in use by another gflow run" in err and f"process {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()
    # once the holder is gone (killed: the system released its lock), the folder is free again
    with claim_output_folder(out):
        pass


def test_a_folder_of_other_files_is_never_written_into(tmp_path, capsys):
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("precious")
    assert main(["run", _toml(tmp_path), "--out", str(foreign), "--no-progress"]) == 2
    assert "files gflow did not write" in capsys.readouterr().err
    assert sorted(os.listdir(foreign)) == ["chapter1.tex"]


def test_resume_refuses_a_checkpoint_of_another_run_naming_what_differs(tmp_path, capsys):
    a = tmp_path / "a"  # an output folder of gflow's with a run's settings
    a.mkdir()
    (a / MARKER_FILE).write_text("a gflow output\n")
    (a / "settings.json").write_text(json.dumps(gflow.ExperimentSettings.from_toml(_toml(tmp_path)).to_dict()))
    # a's settings beside the checkpoint of another chain (lam 0.3), marked as interrupted
    other = gflow.ExperimentSettings.from_toml(_toml(tmp_path, SMALL.replace("lam = 0.5", "lam = 0.3"), "o.toml"))
    traj = gflow.simulate(other.initial_params(), other.record.source, (0.0, 100.0), config=other.record.config,
                          loss="meanfield", n_save=21, progress=False)
    gflow.Trajectory(**{**vars(traj), "status": "interrupted"}).save(a / "trajectory.npz")
    assert main(["resume", str(a), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "belongs to another run" in err and "source.P" in err


def test_restart_discards_a_corrupt_checkpoint(tmp_path, capsys):
    out = tmp_path / "out"  # an output folder of gflow's whose trajectory file is damaged
    out.mkdir()
    (out / MARKER_FILE).write_text("a gflow output\n")
    settings = gflow.ExperimentSettings.from_toml(_toml(tmp_path))
    (out / "settings.json").write_text(json.dumps(settings.to_dict()))
    (out / "trajectory.npz").write_bytes(b"PK\x03\x04 damaged")
    assert main(["run", _toml(tmp_path), "--out", str(out), "--no-progress"]) == 2
    assert "--restart" in capsys.readouterr().err
    assert main(["run", _toml(tmp_path), "--out", str(out), "--no-progress", "--restart"]) == 0
    assert gflow.load(out / "trajectory.npz").ok


def test_a_relative_output_folder_in_a_settings_file_is_relative_to_the_file(tmp_path, monkeypatch):
    sub = tmp_path / "configs"
    sub.mkdir()
    path = _toml(sub, SMALL + '[output]\ndir = "../results/run1"\n')
    monkeypatch.chdir(tmp_path / "configs")
    settings = gflow.ExperimentSettings.from_toml("small.toml")
    assert settings.output["dir"] == str(tmp_path / "results" / "run1")
    assert gflow.ExperimentSettings.from_toml(path).output["dir"] == str(tmp_path / "results" / "run1")


# ----------------------------------------------------------------------------------------------
# atomic outputs


def test_an_interrupted_or_failed_write_leaves_the_old_file_and_no_debris(tmp_path):
    path = tmp_path / "report.md"
    path.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_file(path) as fh:
        fh.write("half of the new")
        raise KeyboardInterrupt
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["report.md"]

    class Full:
        def write(self, data):
            raise OSError(28, "No space left on device")

    with pytest.raises(DiskFullError, match="disk full while writing.*report.md.*kept"), atomic_file(path) as fh:
        Full().write("x")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["report.md"]


@pytest.mark.slow
def test_ctrl_c_at_any_moment_of_a_run_leaves_a_folder_that_resume_completes(tmp_path):
    """SIGINT at moments spread over a whole `gflow run` (flow, analysis, figures, report): exit 130
    (or 0 if it had finished), no truncated file, and `gflow resume` then finishes the same report."""
    cfg = _toml(tmp_path)
    ref = tmp_path / "ref"
    tic = time.perf_counter()
    assert main(["run", cfg, "--out", str(ref), "--no-progress"]) == 0
    whole = time.perf_counter() - tic
    for k, fraction in enumerate((0.35, 0.8)):
        out = tmp_path / f"run{k}"
        child = ("import signal, sys\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
                 "from gflow.app import main\nsys.exit(main(sys.argv[1:]))\n")
        proc = subprocess.Popen([sys.executable, "-c", child, "run", cfg, "--out", str(out), "--no-progress"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while not (out / "settings.json").exists() and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(fraction * whole)
        proc.send_signal(2)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode in (0, 130), err[-2000:]
        for name in os.listdir(out):  # every file present is complete (no temporaries, none truncated)
            assert not name.startswith(".") or name in (".gflow.lock", ".gflow-output"), name
            if name.endswith(".png"):
                assert (out / name).read_bytes()[-8:] == b"IEND\xaeB`\x82", name
        if (out / "trajectory.npz").exists():
            assert main(["resume", str(out), "--no-progress"]) == 0
        else:  # interrupted before the first checkpoint: nothing to resume, a restart is what is left
            assert main(["run", cfg, "--out", str(out), "--no-progress", "--restart"]) == 0
        np.testing.assert_array_equal(gflow.load(out / "trajectory.npz").flat_params(),
                                      gflow.load(ref / "trajectory.npz").flat_params())
        assert (out / "report.md").exists() and (out / "overview.png").exists()


# ----------------------------------------------------------------------------------------------
# sizes checked before allocating


@pytest.mark.parametrize("make", [
    lambda: gflow.init_params(0, gflow.TransformerConfig(d_model=200_000), gflow.MarkovSpec.sticky([0.5, 0.5], 0.2,
                                                                                                   T=3)),
    lambda: gflow.MarkovSpec.dirichlet(0, 200_000, 1.0, T=3),
    lambda: gflow.simulate(*_tiny(), (0.0, 1.0), config=gflow.TransformerConfig(d_model=2), loss="counts",
                           n_save=10**11, progress=False),
    lambda: gflow.simulate(*_tiny(), (0.0, 1.0), config=gflow.TransformerConfig(d_model=2), loss="sampled",
                           n_samples=10**12, progress=False),
], ids=["d_model", "V", "n_save", "n_samples"])
def test_a_size_beyond_the_machine_is_refused_within_a_second(make):
    tic = time.perf_counter()
    with pytest.raises(ValueError, match="would need about .* available"):
        make()
    assert time.perf_counter() - tic < 1.0


def _tiny():
    spec = gflow.MarkovSpec.sticky([0.5, 0.5], 0.2, T=3)
    config = gflow.TransformerConfig(d_model=2)
    return gflow.init_params(0, config, spec), spec


def test_a_chunk_longer_than_the_grid_holds_the_grid(tmp_path):
    p0, spec = _tiny()
    traj = gflow.simulate(p0, spec, (0.0, 1.0), config=gflow.TransformerConfig(d_model=2), loss="counts", n_save=5,
                          chunk_size=10**9, progress=False)
    assert traj.ok and traj.record.solver.chunk_size == 4
    # a crafted file with an absurd chunk loads with the chunk capped, and a bad tolerance is refused
    traj.save(tmp_path / "run.npz")
    for field, value, ok in (("chunk_size", 10**9, True), ("rtol", -1.0, False), ("max_steps", 0, False)):
        _edit_record(tmp_path / "run.npz", tmp_path / "edited.npz", lambda r: r["solver"].update({field: value}))
        if ok:
            assert gflow.load(tmp_path / "edited.npz").record.solver.chunk_size == 4
        else:
            with pytest.raises(ValueError, match=f"not a readable gflow trajectory.*{field}"):
                gflow.load(tmp_path / "edited.npz")


def _edit_record(src, dst, change):
    with np.load(src) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays["meta"]))
    change(meta["record"])
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(dst, **arrays)


# ----------------------------------------------------------------------------------------------
# the smaller classes


@pytest.mark.parametrize("t_span", ["09", (False, True), (0.0, "1"), (0.0,), 5.0])
def test_a_time_span_must_be_two_numbers(t_span):
    """(The suite's jaxtyping hook may catch the type first; it names `t_span` too.)"""
    p0, spec = _tiny()
    with pytest.raises(BAD_TYPE, match="t_span"):
        gflow.simulate(p0, spec, t_span, config=gflow.TransformerConfig(d_model=2), loss="counts", progress=False)


def test_a_span_too_short_for_a_log_grid_is_named():
    p0, spec = _tiny()
    with pytest.raises(ValueError, match="t_span.*smallest normal float"):
        gflow.simulate(p0, spec, (0.0, 5e-324), config=gflow.TransformerConfig(d_model=2), loss="counts",
                       progress=False)


def test_labels_name_each_token_once():
    with pytest.raises(ValueError, match="name each token once"):
        gflow.MarkovSpec.sticky([0.5, 0.5], 0.2, T=3, labels=["a", "a"])


def test_words_keep_their_accents():
    tokens = gflow.data.tokenize("café à la crème, l'été à Zürich; café", 4, "word")
    assert "café" in tokens.labels and "à" in tokens.labels


def test_a_device_is_not_a_missing_file():
    with pytest.raises(ValueError, match="not a regular file"):
        gflow.MarkovSpec.from_text("/dev/zero", vocab_size=3, T=2)


def test_a_reducible_chain_with_its_start_has_levels_and_frequencies():
    P = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.0, 0.5, 0.5]])
    spec = gflow.MarkovSpec(P, [0.5, 0.25, 0.25], T=3)
    levels = spec.reference_levels()
    assert set(levels) == {"best possible", "no context"} and levels["best possible"] < levels["no context"]
    np.testing.assert_allclose(spec.token_frequencies(), [0.5, 0.25, 0.25])
    with pytest.raises(ValueError, match="meanfield.*unique stationary law"):
        gflow.loss_function(spec, gflow.TransformerConfig(d_model=2), "meanfield")


@pytest.mark.parametrize("seed", [2**70, -(2**70)])
def test_a_seed_out_of_range_is_named(seed):
    with pytest.raises(ValueError, match="out of range"):
        gflow.init_params(seed, gflow.TransformerConfig(d_model=2), gflow.MarkovSpec.sticky([0.5, 0.5], 0.2, T=3))


def test_damaged_files_are_refused_with_their_reason(tmp_path):
    p0, spec = _tiny()
    traj = gflow.simulate(p0, spec, (0.0, 1.0), config=gflow.TransformerConfig(d_model=2), loss="counts", n_save=5,
                          progress=False)
    traj.save(tmp_path / "run.npz")
    with np.load(tmp_path / "run.npz") as f:
        arrays = {k: f[k] for k in f.files}
    for name, edit in (("nan", lambda a: a.__setitem__("times", np.array([0.0, np.nan, 0.2, 0.5, 1.0]))),
                       ("backwards", lambda a: a.__setitem__("times", np.array([0.0, 0.5, 0.2, 0.7, 1.0]))),
                       ("nested", lambda a: a.__setitem__("meta", np.array("[" * 100_000 + "]" * 100_000)))):
        copy = dict(arrays)
        edit(copy)
        np.savez(tmp_path / f"{name}.npz", **copy)
        with pytest.raises(ValueError, match="not a readable gflow trajectory"):
            gflow.load(tmp_path / f"{name}.npz")
    assert zipfile.is_zipfile(tmp_path / "nested.npz")


@pytest.mark.slow
def test_gflow_leaves_the_users_own_runtime_checks_on():
    """Equinox's checks are off inside gflow's solves only (so those can be cached), not for the process."""
    code = ("import jax, jax.numpy as jnp, equinox as eqx, gflow\n"
            "spec = gflow.MarkovSpec.sticky((0.6, 0.4), 0.4, T=3); cfg = gflow.TransformerConfig(d_model=2)\n"
            "assert gflow.simulate(gflow.init_params(0, cfg, spec), spec, (0, 1.0), config=cfg, loss='counts',"
            " n_save=3, progress=False).ok\n"
            "f = jax.jit(lambda x: eqx.error_if(x, x < 0, 'negative'))\n"
            "try:\n    f(jnp.asarray(-1.0)).block_until_ready()\nexcept Exception:\n    print('raised')\n")
    env = {k: v for k, v in os.environ.items() if k != "EQX_ON_ERROR"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert "raised" in out.stdout, out.stderr[-2000:]


def test_gflow_compare_needs_a_step_of_every_run(capsys):
    assert main(["compare", "--t-end", "1e-300"]) == 2
    assert "--t-end must be" in capsys.readouterr().err


def test_settings_files_in_other_encodings(tmp_path, capsys):
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbf" + SMALL.encode())
    assert gflow.ExperimentSettings.from_toml(str(bom)).record.config.d_model == 3
    latin = tmp_path / "latin.toml"
    latin.write_bytes(SMALL.encode() + "# r\xe9sum\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin.toml: not UTF-8 text.*save it again as UTF-8"):
        gflow.ExperimentSettings.from_toml(str(latin))


def test_a_truncated_settings_file_is_named(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".gflow-output").write_text("")
    (out / "settings.json").write_text('{"chain": {"pi": [0.6,')
    assert main(["resume", str(out), "--no-progress"]) == 2
    assert "settings.json: cannot be read" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# fuzzers over the new classes: TOML values and bytes, record fields on load


toml_bytes = st.one_of(st.binary(max_size=200), st.text(max_size=200).map(lambda t: t.encode("utf-8")),
                       st.text(max_size=100).map(lambda t: t.encode("utf-16")))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(toml_bytes)
def test_random_bytes_as_a_settings_file_give_a_named_error_or_settings(tmp_path, data):
    path = tmp_path / "x.toml"
    path.write_bytes(data)
    try:
        gflow.ExperimentSettings.from_toml(str(path))
    except ValueError as e:
        assert "x.toml" in str(e) or str(e).startswith(str(path)), str(e)


record_values = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                          st.text(max_size=5), st.lists(st.floats(allow_nan=True), max_size=3))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["t_span", "save_times", "solver.rtol", "solver.atol", "solver.max_steps", "solver.chunk_size",
                        "solver.name", "kind", "ensemble_size", "loss.method", "loss.n_samples", "config.d_model",
                        "config.mlp"]), record_values)
def test_random_record_fields_on_load_are_refused_or_loaded(tmp_path, field, value):
    if not (tmp_path / "run.npz").exists():
        p0, spec = _tiny()
        gflow.simulate(p0, spec, (0.0, 1.0), config=gflow.TransformerConfig(d_model=2), loss="counts", n_save=5,
                       progress=False).save(tmp_path / "run.npz")

    def change(record):
        where, _, key = field.rpartition(".")
        (record[where] if where else record)[key] = value

    _edit_record(tmp_path / "run.npz", tmp_path / "edited.npz", change)
    try:
        traj = gflow.load(tmp_path / "edited.npz")
    except ValueError as e:
        assert "not a readable gflow trajectory" in str(e)
    else:
        assert traj.record.solver.chunk_size <= len(traj.record.save_times)


@pytest.mark.slow
def test_sizes_refused_before_allocating_never_crash_the_process():
    """The crash class: sizes that aborted the process (SIGABRT in XLA) now raise in Python."""
    code = ("import gflow\ntry:\n    gflow.init_params(0, gflow.TransformerConfig(d_model=200000), "
            "gflow.MarkovSpec.sticky([0.5, 0.5], 0.2, T=3))\nexcept ValueError as e:\n    print('refused')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "refused" in out.stdout, out.stderr[-2000:]



@settings(max_examples=25, deadline=None)
@given(st.sampled_from(["d_model", "n_heads", "mlp", "V"]), st.one_of(st.sampled_from([2, 5, 17]),
                                                                       st.integers(10**10, 10**14)))
def test_random_sizes_are_refused_before_allocating_or_built(name, size):
    """Any size either builds (small) or is refused with the estimate, quickly (never an abort)."""
    tic = time.perf_counter()
    spec_V = size if name == "V" else 3
    try:
        spec = gflow.MarkovSpec.dirichlet(0, spec_V, 1.0, T=2) if name == "V" else \
            gflow.MarkovSpec.sticky([0.5, 0.3, 0.2], 0.2, T=2)
        fields = {"d_model": 4, name: size} if name != "V" else {"d_model": 4}
        gflow.init_params(0, gflow.TransformerConfig(**fields), spec, scale=0.1)
    except ValueError as e:
        assert "would need about" in str(e), str(e)
    assert time.perf_counter() - tic < 20.0
