import os

import numpy as np
import pytest

import gflow
from gflow.app import main

SMALL = """
[chain]
kind = "sticky"
pi = [0.6, 0.3, 0.1]
lam = 0.5
T = 4

[model]
d_model = 3

[init]
scale = 0.001

[flow]
t_end = 300.0
n_save = 41
loss = "meanfield"
"""


def test_demo_settings_are_the_focus_dilution_setting():
    spec, config, run = gflow.ExperimentSettings.demo().build()
    np.testing.assert_allclose(spec.stationary(), [0.75, 0.19, 0.05, 0.01], atol=1e-14)
    assert config == gflow.TransformerConfig(d_model=8) and run["loss"] == "meanfield" and run["t_end"] == 1e5


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """`gflow run` of `SMALL` (its output folder and what it printed), shared by the tests that read it."""
    import contextlib
    import io

    folder = tmp_path_factory.mktemp("small")
    cfg = folder / "small.toml"
    cfg.write_text(SMALL)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(["run", str(cfg), "--out", str(folder / "out"), "--no-progress"])
    return status, folder / "out", printed.getvalue()


def test_gflow_run_writes_report_figures_and_trajectory(small_run):
    status, out, printed = small_run
    assert status == 0
    for name in ("report.md", "trajectory.npz", "overview.png", "overview.pdf", "attention.png", "hessian.pdf"):
        assert os.path.getsize(out / name) > 0, name
    assert "Stages of learning" in printed and "condensation" in printed
    report = (out / "report.md").read_text()
    assert "![overview](overview.png)" in report and "| plateau |" in report
    traj = gflow.load(out / "trajectory.npz")
    assert traj.ok and len(traj) == 41 and traj.times[-1] == 300.0


def test_resume_into_a_finished_run_recomputes_nothing_and_overwrites_nothing(tmp_path, capsys, small_run,
                                                                            monkeypatch):
    """`gflow run CFG --resume` into a folder whose run finished: with the same settings it says so and
    exits 0 without computing (or writes only a missing report); with other settings it refuses (it
    used to start afresh silently); a new budget for it is refused."""
    import json
    import shutil

    out = small_run[1]
    written = os.path.getmtime(out / "trajectory.npz")
    monkeypatch.setattr(gflow.app._cli, "run_experiment", None)  # nothing may be run
    same, other = tmp_path / "same.toml", tmp_path / "other.toml"
    same.write_text(SMALL + "max_steps = 5000\n")  # the budget does not make it another run
    other.write_text(SMALL.replace("t_end = 300.0", "t_end = 400.0"))
    assert main(["run", str(same), "--out", str(out), "--resume", "--no-progress"]) == 0
    assert "already holds this run, finished; nothing to resume" in capsys.readouterr().out
    assert main(["run", str(other), "--out", str(out), "--resume", "--no-progress"]) == 2
    assert "holds a finished run of other settings: there is nothing to resume" in capsys.readouterr().err
    assert main(["resume", str(out), "--max-steps", "20", "--no-progress"]) == 2  # not a budget it ran under
    assert "--max-steps: the run in" in capsys.readouterr().err
    with pytest.raises(ValueError, match="20 is below the budget"):
        gflow.resume(out / "trajectory.npz", max_steps=20)
    assert os.path.getmtime(out / "trajectory.npz") == written
    assert json.loads((out / "settings.json").read_text())["flow"]["max_steps"] == 100000
    # a finished run whose report was never written (its analysis interrupted): --resume writes it
    unreported = tmp_path / "unreported"
    shutil.copytree(out, unreported)
    os.remove(unreported / "report.md")
    assert main(["run", str(same), "--out", str(unreported), "--resume", "--no-progress"]) == 0
    assert (unreported / "report.md").read_text().count("Stages of learning")


def test_gflow_run_on_a_sparse_lag_task(tmp_path, capsys):
    """examples/sparse_lags.toml builds the sparse-lag teacher it says; a short run of a smaller one
    adds the sparse-task events and figures to the report."""
    import tomllib

    settings = gflow.ExperimentSettings.from_toml(os.path.join(os.path.dirname(__file__), "..", "examples",
                                                               "sparse_lags.toml"))
    spec, config, _ = settings.build()
    assert isinstance(spec, gflow.SparseLagSpec) and spec.V == 6 and spec.spans == (1, 1, 1)
    assert config.n_heads == 3 and config.value and config.positional == "learned"
    raw = tomllib.loads(open(os.path.join(os.path.dirname(__file__), "..", "examples", "sparse_lags.toml")).read())
    raw["chain"].update(V=2, spans=[1, 1])
    raw["model"].update(n_heads=2, d_model=2)
    raw["flow"].update(t_end=100.0, n_save=25)
    out = tmp_path / "out"
    gflow.app.run_experiment(gflow.ExperimentSettings.from_dict(raw), str(out), progress=False, echo=lambda *a: None)
    report = (out / "report.md").read_text()
    assert "## Sparse-task events" in report and "Class levels: 0 blocks" in report
    assert os.path.getsize(out / "ladder.png") > 0 and os.path.getsize(out / "attention-maps.pdf") > 0


@pytest.mark.parametrize(
    ("text", "match"),
    [("[chian]\nkind = 'sticky'", "unknown section"), ("[chain]\nlamda = 0.5", "unknown key.*lamda"),
     ("[chain]\nlam = 'half'", r"\[chain\].lam must be int or float"), ("[chain]\nlam = 1.5", r"\[chain\].*`lam`"),
     ("[model]\nd_model = 0", r"\[model\].*d_model"), ("[flow]\nrtol = -1.0", r"\[flow\].rtol"),
     ("[init]\nscale = 0.1\ngamma = 1.0", "not both"), ("[chain]\nkind = 'hmm'", "`kind`"),
     ("[flow\n", "not valid TOML"), ("[flow]\nt_end = true", r"\[flow\].t_end must be int or float"),
     ("[model]\nresidual = 1", r"\[model\].residual must be bool"),
     # Names are checked when the file is read, not by a traceback from simulate later.
     ("[flow]\nloss = 'exact'", r"\[flow\].loss must be one of"), ("[flow]\nsolver = 'Euler'", r"\[flow\].solver"),
     ("[model]\npositional = 'learned'", r"\[flow\].loss.*positional='none'"),
     ("[chain]\nkind = 'sticky'\np = 0.3", r"unknown key.*'p'.*\[chain\] for kind = 'sticky'"),
     ("[chain]\nkind = 'binary'\np = 0.3", r"\[chain\].q is required for kind = 'binary'")],
)
def test_bad_config_files_are_named_precisely(tmp_path, capsys, text, match):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ValueError, match=match):
        gflow.ExperimentSettings.from_toml(str(cfg))
    assert main(["run", str(cfg)]) == 2
    assert "gflow: error:" in capsys.readouterr().err


def test_a_run_with_nothing_to_analyse_writes_its_report_and_exits_1(tmp_path, capsys):
    """An initialisation whose loss overflows keeps one point: the report says why there is no
    analysis (before: LAPACK's "illegal value", then `Eigenvalues did not converge` and exit 2)."""
    cfg = tmp_path / "huge.toml"
    cfg.write_text(SMALL.replace("scale = 0.001", "scale = 1e200"))
    assert main(["run", str(cfg), "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Status: **nonfinite**" in report and "No analysis: `traj` has 0 saved point(s)" in report
    assert (tmp_path / "out" / "trajectory.npz").exists() and not (tmp_path / "out" / "overview.png").exists()


def test_missing_config_file(capsys):
    assert main(["run", "/nonexistent/x.toml"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_settings_keys_are_the_functions_own_parameters():
    """The schema is generated: simulate's defaults are the file's defaults (n_save was 241 in the
    settings and 121 in simulate), and every [flow] key reaches simulate."""
    import inspect

    from gflow.app._settings import SCHEMA

    defaults = {k: p.default for k, p in inspect.signature(gflow.simulate).parameters.items()}
    flow = gflow.ExperimentSettings.demo().flow
    for key in ("rtol", "atol", "n_save", "max_steps", "solver", "chunk_size", "n_samples"):
        assert flow[key] == defaults[key], key
    assert set(gflow.ExperimentSettings.demo().simulate_arguments()) <= set(defaults)
    assert set(SCHEMA["model"]) == {"n_heads", "d_model", "d_head", "value", "residual", "positional", "attn_scale",
                                   "layernorm", "mlp", "activation", "tied", "unembed_bias", "n_layers"}


def test_gflow_compare_keeps_every_flow_setting(tmp_path):
    """`gflow compare` spread the settings into simulate by hand and dropped [flow].max_steps."""
    cfg = tmp_path / "small.toml"
    cfg.write_text(SMALL + "max_steps = 12345\nrtol = 1e-7\n")
    settings = gflow.ExperimentSettings.from_toml(str(cfg))
    flow, trajs, comps = gflow.app.run_comparison(settings, str(tmp_path / "cmp"), t_end=20.0,
                                                  runs=(("gd", 0.5, None),), progress=False, echo=lambda s: None)
    assert flow.record.solver.max_steps == 12345 and flow.settings["rtol"] == 1e-7
    assert os.path.getsize(tmp_path / "cmp" / "comparison.png") > 0 and np.all(np.isfinite(comps[0].distance))


def test_the_example_file_shows_every_key():
    import re

    from gflow.app._settings import SCHEMA, chain_schema

    text = open(os.path.join(os.path.dirname(__file__), "..", "examples", "small.toml")).read()
    shown = set(re.findall(r"^#? ?(\w+) = ", text, flags=re.M))
    for section, keys in SCHEMA.items():
        expected = set(chain_schema("sticky")) if section == "chain" else set(keys)
        assert expected <= shown, (section, expected - shown)


def _report_without_timings(path) -> str:
    return "\n".join(line for line in open(path).read().splitlines() if "Status:" not in line)


def test_interrupt_then_gflow_resume_gives_the_uninterrupted_report(tmp_path, capsys):
    """SIGINT to a running `gflow run`, then `gflow resume DIR`: the same trajectory and report."""
    import signal
    import subprocess
    import sys
    import time

    cfg = tmp_path / "small.toml"
    cfg.write_text(SMALL.replace("n_save = 41", "n_save = 81\nchunk_size = 1"))
    out, ref = tmp_path / "out", tmp_path / "ref"
    # The child sleeps 0.2 s after each checkpoint, so the run cannot finish between the first
    # checkpoint and the signal, however loaded the machine (80 chunks: 16 s left at least).
    # A process started in the background by a non-interactive shell (as CI may start the suite)
    # inherits SIGINT *ignored*, and Python then installs no KeyboardInterrupt handler: the child
    # restores Python's own handler, as an interactive `gflow run` has it.
    child = ("import signal, sys, time\n"
             "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
             "from gflow import Trajectory\n"
             "save = Trajectory.save\n"
             "def slow_save(self, path):\n"
             "    save(self, path)\n"
             "    time.sleep(0.2)\n"
             "Trajectory.save = slow_save\n"
             "from gflow.app import main\n"
             "sys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.Popen([sys.executable, "-c", child, "run", str(cfg), "--out", str(out), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (out / "trajectory.npz").exists():  # the first chunk is done: the run is under way
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.02)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert err.count("interrupted at t =") == 1 and f"gflow resume {out}" in err
    assert gflow.load(out / "trajectory.npz").status == "interrupted"
    # Running into the folder again does not silently start afresh.
    assert main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["resume", str(out), "--no-progress"]) == 0
    assert main(["run", str(cfg), "--out", str(ref), "--no-progress"]) == 0
    resumed, whole = gflow.load(out / "trajectory.npz"), gflow.load(ref / "trajectory.npz")
    np.testing.assert_array_equal(resumed.flat_params(), whole.flat_params())
    assert _report_without_timings(out / "report.md") == _report_without_timings(ref / "report.md")


def test_the_console_script_flushes_its_output_and_keeps_the_exit_status(tmp_path):
    """`python -m gflow.app` (the `gflow` script's `console_main`) skips the interpreter's teardown
    after a command: its printed output still arrives whole through a pipe, its files are complete,
    and the exit status is the command's (0 for a finished run, 2 for bad input)."""
    import subprocess
    import sys

    cfg = tmp_path / "small.toml"
    cfg.write_text(SMALL)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "gflow.app", "run", str(cfg), "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.rstrip().splitlines()[-1].startswith("total ")
    assert gflow.load(out / "trajectory.npz").ok and (out / "report.md").read_text().count("Stages of learning")
    bad = subprocess.run([sys.executable, "-m", "gflow.app", "run", str(tmp_path / "missing.toml")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().endswith("does not exist.")


def test_gflow_resume_with_a_new_step_budget_finishes_a_run_that_ran_out(tmp_path, capsys, small_run, monkeypatch):
    """A run stopped at max_steps continues with `gflow resume DIR --max-steps N`, or with `gflow run
    CFG --resume` once the file's budget is raised, to the trajectory and report of a run given that
    budget from the start, and its settings.json says the new budget."""
    import json
    import shutil

    cfg = tmp_path / "small.toml"
    cfg.write_text(SMALL + "max_steps = 30\n")
    out, ref = tmp_path / "out", small_run[1]  # the same settings with the default budget, 100,000
    assert main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 1
    stopped = gflow.load(out / "trajectory.npz")
    assert stopped.status == "max_steps" and 0 < stopped.times[-1] < 300.0
    assert "gflow resume DIR --max-steps N" in stopped.message
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert main(["run", str(cfg), "--out", str(copy), "--resume", "--no-progress"]) == 2  # its own budget again
    assert "(max_steps 30) at t = " in capsys.readouterr().err
    lowered = tmp_path / "lowered.toml"
    lowered.write_text(SMALL + "max_steps = 20\n")  # a smaller budget might have stopped a finished chunk
    assert main(["run", str(lowered), "--out", str(copy), "--resume", "--no-progress"]) == 2
    assert "[flow].max_steps: 20 is below the budget the run's finished chunks were solved under (30)" in \
        capsys.readouterr().err
    assert main(["resume", str(out), "--max-steps", "20", "--no-progress"]) == 2
    assert "--max-steps: 20 is below" in capsys.readouterr().err
    assert main(["resume", str(out), "--no-progress"]) == 2  # it would stop at the same step again
    assert "pass a larger --max-steps N" in capsys.readouterr().err
    assert main(["resume", str(out), "--max-steps", "30", "--no-progress"]) == 2
    assert "--max-steps: the run stopped because a chunk needed more than 30 steps" in capsys.readouterr().err
    assert json.loads((out / "settings.json").read_text())["flow"]["max_steps"] == 30  # not rewritten
    with pytest.raises(ValueError, match="with 30 it would stop there again"):
        gflow.resume(out / "trajectory.npz", max_steps=30)
    assert main(["resume", str(out), "--max-steps", "0", "--no-progress"]) == 2
    assert "--max-steps must be at least 1" in capsys.readouterr().err
    assert main(["resume", str(out), "--max-steps", "100000", "--no-progress"]) == 0
    resumed, whole = gflow.load(out / "trajectory.npz"), gflow.load(ref / "trajectory.npz")
    np.testing.assert_array_equal(resumed.flat_params(), whole.flat_params())
    assert resumed.record.solver.max_steps == 100000
    assert json.loads((out / "settings.json").read_text())["flow"]["max_steps"] == 100000
    assert _report_without_timings(out / "report.md") == _report_without_timings(ref / "report.md")
    # The file with the budget raised: the same run, offered for resuming (it was "other settings").
    raised = tmp_path / "raised.toml"
    raised.write_text(SMALL)
    assert main(["run", str(raised), "--out", str(copy), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "(max_steps 30; it continues with 100000); pass --resume" in err and "other settings" not in err
    monkeypatch.setattr(gflow.app._cli, "run_experiment", None)  # --resume must not start afresh
    assert main(["run", str(raised), "--out", str(copy), "--resume", "--no-progress"]) == 0
    np.testing.assert_array_equal(gflow.load(copy / "trajectory.npz").flat_params(), whole.flat_params())
    assert json.loads((copy / "settings.json").read_text())["flow"]["max_steps"] == 100000
