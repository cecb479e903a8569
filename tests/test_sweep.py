"""Sweeps (`gflow sweep`, `gflow.sweep`): every combination checked first, one independent run per point,
resumable and shareable through the folder, the same results on any executor (a real Dask
`LocalCluster` here, with a worker killed mid-sweep), a phase figure."""

import csv
import os
import signal
import subprocess
import sys
import threading
import time

import matplotlib.image
import numpy as np
import pytest

import gflow
from gflow.app import main, plan_sweep

BASE = {"chain": {"pi": [0.6, 0.3, 0.1], "lam": 0.5, "T": 4}, "model": {"d_model": 3},
        "init": {"scale": 0.01}, "flow": {"t_end": 50.0, "n_save": 21, "loss": "meanfield"}}
GRID = {"init.scale": [0.01, 0.1], "chain.lam": [0.3, 0.6]}
SWEEP_TOML = """[chain]
pi = [0.6, 0.3, 0.1]
lam = 0.5
T = 4
[model]
d_model = 3
[flow]
t_end = 50.0
n_save = 21
loss = "meanfield"
[sweep]
"init.scale" = [0.01, 0.1]
"chain.lam" = [0.3, 0.6, 0.8]
"""


def _loop_losses(grid=GRID):
    """The final losses of a plain loop of `simulate` calls over the same grid (the reference)."""
    out = {}
    for run in plan_sweep(BASE, grid).runs:
        s = gflow.ExperimentSettings.from_dict(run.settings)
        traj = gflow.simulate(s.initial_params(), s.record.source, (0.0, 50.0), config=s.record.config,
                              loss="meanfield", n_save=21, progress=False)
        out[run.run_id] = float(traj.loss[-1])
    return out


def _assert_same(rows, reference):
    """Each run's final loss is the in-process run's: to the last bit when both processes run XLA on
    the same number of threads, to a few ulps otherwise (docs/sweeps.md)."""
    assert set(reference) == {r["run_id"] for r in rows}
    for r in rows:
        assert r["final_loss"] == pytest.approx(reference[r["run_id"]], rel=1e-13, abs=0), r["run_id"]


@pytest.mark.parametrize(("grid", "mode", "match"), [
    ({"init.scal": [1e-3]}, "grid", r"'init.scal' is not a setting.*\[init\] has"),
    ({"scale": [1e-3]}, "grid", "'section.key'"),
    ({"init.scale": []}, "grid", "non-empty list"),
    ({"init.scale": 1e-3}, "grid", "non-empty list"),
    ({"init.scale": [1e-3, 1e-3]}, "grid", "repeats a value"),
    ({"init.scale": [1e-3, "big"]}, "grid", r"init.scale = 'big'.*\[init\].scale must be"),
    ({"chain.lam": [0.5, 1.5]}, "grid", r"chain.lam = 1.5.*`lam`"),
    ({"init.scale": [1e-3, 1e-2], "chain.lam": [0.5]}, "zip", "lists of one length"),
    ({"init.scale": [1e-3]}, "diagonal", "mode"),
    ({}, "grid", "at least one"),
])
def test_every_combination_is_checked_before_anything_runs(grid, mode, match):
    with pytest.raises(ValueError, match=match):
        plan_sweep(BASE, grid, mode)


def test_zip_pairs_and_ids_follow_the_settings():
    grid = {"init.scale": [0.01, 0.1], "chain.lam": [0.3, 0.6]}
    zipped = plan_sweep(BASE, grid, "zip").runs
    assert [r.values for r in zipped] == [{"init.scale": 0.01, "chain.lam": 0.3}, {"init.scale": 0.1, "chain.lam": 0.6}]
    full = plan_sweep(BASE, grid).runs
    assert len(full) == 4 and len({r.run_id for r in full}) == 4
    assert {r.run_id for r in zipped} <= {r.run_id for r in full}  # the id is the settings', not the grid's


def test_a_local_sweep_resumes_and_recomputes_only_what_is_missing(tmp_path):
    printed = []
    result = gflow.sweep(BASE, GRID, out=str(tmp_path / "s"), workers=2, progress=False, echo=printed.append)
    assert result.computed == 4 and all(r["status"] == "success" for r in result.rows)
    reference = _loop_losses()
    _assert_same(result.rows, reference)
    with open(tmp_path / "s" / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and {"init.scale", "chain.lam", "run_id", "first_escape", "loss_gap"} <= set(rows[0])
    image = matplotlib.image.imread(tmp_path / "s" / "phase.png")
    assert image.shape[0] > 100 and image.shape[1] > 100
    # a second run computes nothing; a deleted run is computed again, alone
    again = gflow.sweep(BASE, GRID, out=str(tmp_path / "s"), workers=2, progress=False, echo=printed.append)
    assert again.computed == 0 and "4 of 4 done, 0 to run" in printed[-2]
    gone = result.rows[2]["run_id"]
    for name in os.listdir(tmp_path / "s" / "runs" / gone):
        os.remove(tmp_path / "s" / "runs" / gone / name)
    third = gflow.sweep(BASE, GRID, out=str(tmp_path / "s"), workers=2, progress=False, echo=printed.append)
    assert third.computed == 1 and "3 of 4 done, 1 to run" in printed[-2]
    _assert_same(third.rows, reference)


def test_a_dask_cluster_that_loses_a_worker_completes_every_run_once(tmp_path):
    """A real `dask.distributed.LocalCluster` with 2 worker processes; one is killed while the sweep
    runs; Dask reschedules its runs; every run ends with exactly one row, equal to a local loop's."""
    from distributed import Client, LocalCluster

    grid = {"init.scale": [0.01, 0.03, 0.1], "chain.lam": [0.3, 0.6]}
    out = tmp_path / "dask"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        done = {}
        thread = threading.Thread(target=lambda: done.update(result=gflow.sweep(
            BASE, grid, out=str(out), executor=client.get_executor(), progress=False, echo=lambda *a: None)))
        thread.start()
        deadline = time.time() + 240
        while time.time() < deadline and not any(
                os.path.exists(out / "runs" / d / "summary.json") for d in (os.listdir(out / "runs")
                                                                             if (out / "runs").exists() else [])):
            time.sleep(0.05)
        pids = client.run(os.getpid)
        os.kill(next(iter(pids.values())), signal.SIGKILL)  # the worker dies mid-sweep
        thread.join(timeout=300)
    result = done["result"]
    reference = _loop_losses(grid)
    assert len(result.rows) == 6
    _assert_same(result.rows, reference)
    for run_id in reference:
        assert sorted(os.listdir(out / "runs" / run_id)).count("summary.json") == 1


@pytest.mark.slow
def test_a_killed_sweep_resumes_where_it_stopped(tmp_path):
    cfg = tmp_path / "sweep.toml"
    cfg.write_text(SWEEP_TOML)
    out = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-m", "gflow.app", "sweep", str(cfg), "--out", str(out), "--workers", "1",
                             "--no-progress"], start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline:
        finished = [d for d in (os.listdir(out / "runs") if (out / "runs").exists() else [])
                    if os.path.exists(out / "runs" / d / "summary.json")]
        if finished:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its worker processes, at once
    proc.wait()
    assert main(["sweep", str(cfg), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    with open(out / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and all(r["status"] == "success" for r in rows)
    assert all(np.isfinite(float(r["final_loss"])) for r in rows)


def test_bad_sweep_commands_exit_2(tmp_path, capsys):
    cfg = tmp_path / "sweep.toml"
    cfg.write_text(SWEEP_TOML)
    assert main(["sweep", str(cfg), "--workers", "0", "--out", str(tmp_path / "a")]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err
    plain = tmp_path / "plain.toml"
    plain.write_text(SWEEP_TOML.split("[sweep]")[0])
    assert main(["sweep", str(plain), "--out", str(tmp_path / "b")]) == 2
    assert "needs a [sweep] table" in capsys.readouterr().err
    try:
        import ray  # noqa: F401
    except ImportError:
        assert main(["sweep", str(cfg), "--executor", "ray", "--out", str(tmp_path / "c")]) == 2
        assert "gflow[ray]" in capsys.readouterr().err
    tic = time.perf_counter()
    assert main(["sweep", str(cfg), "--executor", "dask", "--address", "tcp://127.0.0.1:9", "--out",
                 str(tmp_path / "d")]) == 2
    assert "cannot reach the Dask scheduler at 'tcp://127.0.0.1:9'" in capsys.readouterr().err
    assert time.perf_counter() - tic < 30
    # a folder holding another sweep's runs is refused
    other = tmp_path / "e"
    gflow.sweep(BASE, {"init.scale": [0.01]}, out=str(other), workers=1, progress=False, echo=lambda *a: None)
    assert main(["sweep", str(cfg), "--out", str(other), "--no-progress"]) == 2
    assert "holds another sweep" in capsys.readouterr().err
