import os

import numpy as np
import pytest

import gflow
from gflow._cli import main

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


def test_gflow_run_writes_report_figures_and_trajectory(tmp_path, capsys):
    cfg = tmp_path / "small.toml"
    cfg.write_text(SMALL)
    out = tmp_path / "out"
    assert main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 0
    for name in ("report.md", "trajectory.npz", "overview.png", "overview.pdf", "attention.png", "hessian.pdf"):
        assert os.path.getsize(out / name) > 0, name
    printed = capsys.readouterr().out
    assert "Stages of learning" in printed and "condensation" in printed
    report = (out / "report.md").read_text()
    assert "![overview](overview.png)" in report and "| plateau |" in report
    traj = gflow.load(out / "trajectory.npz")
    assert traj.ok and len(traj) == 41 and traj.times[-1] == 300.0


@pytest.mark.parametrize(
    ("text", "match"),
    [("[chian]\nkind = 'sticky'", "unknown section"), ("[chain]\nlamda = 0.5", "unknown key.*lamda"),
     ("[chain]\nlam = 'half'", r"\[chain\].lam must be int or float"), ("[chain]\nlam = 1.5", r"\[chain\].*`lam`"),
     ("[model]\nd_model = 0", r"\[model\].*d_model"), ("[flow]\nrtol = -1.0", r"\[flow\].rtol"),
     ("[init]\nscale = 0.1\ngamma = 1.0", "not both"), ("[chain]\nkind = 'hmm'", "`kind`"),
     ("[flow\n", "not valid TOML"), ("[flow]\nt_end = true", r"\[flow\].t_end must be int or float"),
     ("[model]\nresidual = 1", r"\[model\].residual must be bool")],
)
def test_bad_config_files_are_named_precisely(tmp_path, capsys, text, match):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ValueError, match=match):
        gflow.ExperimentSettings.from_toml(str(cfg))
    assert main(["run", str(cfg)]) == 2
    assert "gflow: error:" in capsys.readouterr().err


def test_missing_config_file(capsys):
    assert main(["run", "/nonexistent/x.toml"]) == 2
    assert "does not exist" in capsys.readouterr().err
