"""One experiment end to end: simulate, mark the stages, linearise at plateaus, draw, report.

This is what `gflow demo`, `gflow run CONFIG.toml` and examples/focus_dilution.py do. The output
folder holds `trajectory.npz`, the figures (PNG and PDF) and `report.md` embedding them.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax

from ._flow import simulate
from ._model import init_params
from ._settings import ExperimentSettings
from ._trajectory import Trajectory
from .analysis import (
    Event,
    PlateauEscape,
    compute_metrics,
    detect_stages,
    linearization_table,
    plateau_linearization,
    stage_table,
)
from .plot import attention_figure, hessian_figure, overview_figure, save_figure


@dataclasses.dataclass(frozen=True)
class ExperimentResult:
    trajectory: Trajectory
    events: list[Event]
    plateaus: list[PlateauEscape]
    out_dir: str
    timings: dict[str, float]


def run_experiment(settings: ExperimentSettings, out_dir: str | None = None, *, progress: bool | None = None,
                   echo=print) -> ExperimentResult:
    """Run `settings` and write everything to `out_dir` (default: `[output].dir`)."""
    out_dir = os.fspath(out_dir or settings.output["dir"])
    os.makedirs(out_dir, exist_ok=True)
    spec, config, run = settings.build()
    tic = time.perf_counter()
    params0 = init_params(jax.random.key(run["seed"]), config, spec, scale=run["scale"], gamma=run["gamma"])
    traj = simulate(params0, spec, (0.0, run["t_end"]), config=config, loss=run["loss"], rtol=run["rtol"],
                    atol=run["atol"], n_save=run["n_save"], solver=run["solver"], max_steps=run["max_steps"],
                    progress=progress, checkpoint=os.path.join(out_dir, "trajectory.npz"))
    t_flow = time.perf_counter() - tic
    echo(f"flow: {traj.status} ({traj.message}); {traj.stats['num_accepted_steps']} accepted and "
         f"{traj.stats['num_rejected_steps']} rejected steps; loss {traj.loss[0]:.5f} -> {traj.loss[-1]:.5f} "
         f"(unigram entropy {spec.unigram_entropy():.5f}, entropy rate {spec.entropy_rate():.5f})")
    tic = time.perf_counter()
    metrics = compute_metrics(traj)
    events = detect_stages(metrics)
    plateaus = plateau_linearization(traj, events)
    t_analysis = time.perf_counter() - tic
    stages_md, lin_md = stage_table(events), linearization_table(plateaus)
    echo("\nStages of learning\n" + stages_md + "\n\nLinearisation at each plateau\n" + lin_md)
    tic = time.perf_counter()
    figures = {
        "overview": overview_figure(metrics, events, entropy_rate=spec.entropy_rate(),
                                    unigram_entropy=spec.unigram_entropy()),
        "attention": attention_figure(metrics, events),
        "hessian": hessian_figure(plateaus),
    }
    for name, fig in figures.items():
        save_figure(fig, os.path.join(out_dir, name))
    t_fig = time.perf_counter() - tic
    timings = {"flow_s": t_flow, "analysis_s": t_analysis, "figures_s": t_fig}
    _write_report(out_dir, settings, traj, stages_md, lin_md, timings)
    echo(f"\nwrote {out_dir}/report.md, trajectory.npz and figures (overview, attention, hessian; PNG and PDF)")
    return ExperimentResult(traj, events, plateaus, out_dir, timings)


def _write_report(out_dir, settings, traj, stages_md, lin_md, timings):
    s = traj.stats
    lines = [
        "# gflow report", "",
        f"Chain: `{settings.chain}`  ", f"Model: `{settings.model}`  ", f"Init: `{settings.init}`  ",
        f"Flow: `{settings.flow}`", "",
        f"Status: **{traj.status}** ({traj.message}). Solver {traj.settings['solver']}, rtol {traj.settings['rtol']:g},"
        f" atol {traj.settings['atol']:g}: {s['num_accepted_steps']} accepted, {s['num_rejected_steps']} rejected "
        f"steps, {s['wall_time_s']:.1f} s of integration (flow stage {timings['flow_s']:.1f} s with compilation).",
        "", f"Loss {traj.loss[0]:.6f} → {traj.loss[-1]:.6f}; unigram entropy {traj.spec.unigram_entropy():.6f}, "
        f"entropy rate {traj.spec.entropy_rate():.6f}.", "",
        "![overview](overview.png)", "", "## Stages of learning", "", stages_md, "",
        "Cycle k is the stretch of time during which k embedding directions are open.", "",
        "![attention at each event](attention.png)", "", "## Linearisation at each plateau", "", lin_md, "",
        "Predicted escape: plateau entry + log(|unstable component at escape| / |at entry|) / |lambda_min|, "
        "with the Hessian taken at the plateau's log-midpoint (docs/analysis.md says what this assumes).", "",
        "![Hessian spectra](hessian.png)", "",
    ]
    with open(os.path.join(out_dir, "report.md"), "w") as fh:
        fh.write("\n".join(lines))
