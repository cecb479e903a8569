"""One experiment end to end: simulate, mark the stages, linearise at plateaus, draw, report.

This is what `gflow demo`, `gflow run CONFIG.toml` and examples/focus_dilution.py do. The output
folder holds `settings.json`, `trajectory.npz`, the figures (PNG and PDF) and `report.md` embedding
them. The run holds the folder for itself while it works (`claim_output_folder`: a second run into it
is refused), writes every file atomically (an interruption leaves the old file or the new one), and
`resume_experiment` continues only a checkpoint whose record is the one the settings describe.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from ..analysis import (
    Event,
    PlateauEscape,
    compute_metrics,
    detect_induction_events,
    detect_lag_events,
    detect_stages,
    finite_points,
    induction_probes,
    lag_probes,
    linearization_table,
    plateau_linearization,
    stage_table,
    unanalysable,
)
from ..common import atomic_file, check_writable_folder, claim_output_folder
from ..data import InContextMarkovSpec, SparseLagSpec
from ..flow import check_resume_budget, resume, run_record
from ..losses import MAX_ENUMERATED_SEQUENCES
from ..plot import (
    FigureWriter,
    attention_figure,
    hessian_figure,
    lag_attention_maps,
    lag_figure,
    overview_figure,
)
from ..record import RunStatus, Trajectory, load, read_status
from ._settings import ExperimentSettings


@dataclasses.dataclass(frozen=True)
class ExperimentResult:
    trajectory: Trajectory
    events: list[Event]
    plateaus: list[PlateauEscape]
    out_dir: str
    timings: dict[str, float]


SETTINGS_FILE = "settings.json"
TRAJECTORY_FILE = "trajectory.npz"
REPORT_FILE = "report.md"


def run_experiment(settings: ExperimentSettings, out_dir: str | None = None, *, progress: bool | None = None,
                   echo=print) -> ExperimentResult:
    """Run `settings` and write everything to `out_dir` (default: `[output].dir`): the settings
    (`settings.json`), the trajectory (also the checkpoint while it runs), figures and `report.md`.
    The folder is checked (writable, not another program's files, not in use) before anything is
    computed; a previous run's checkpoint and report in it are discarded."""
    out_dir = os.fspath(out_dir or settings.output["dir"])
    with claim_output_folder(out_dir):
        check_writable_folder("out_dir", out_dir)
        for stale in (TRAJECTORY_FILE, REPORT_FILE):  # a restart: nothing of the old run may look current
            if os.path.exists(os.path.join(out_dir, stale)):
                os.remove(os.path.join(out_dir, stale))
        with atomic_file(os.path.join(out_dir, SETTINGS_FILE)) as fh:
            json.dump(settings.to_dict(), fh, indent=1)
        with FigureWriter() as writer:  # its helper process starts now, while the flow runs
            tic = time.perf_counter()
            traj = run_record(settings.record, settings.initial_params(), progress=progress,
                              checkpoint=os.path.join(out_dir, TRAJECTORY_FILE))
            return _analyse_and_report(settings, traj, out_dir, time.perf_counter() - tic, echo, writer)


def read_settings(out_dir: str) -> ExperimentSettings:
    """The settings a `gflow run` wrote into `out_dir` (`settings.json`); `ValueError` naming the file."""
    path = os.path.join(out_dir, SETTINGS_FILE)
    try:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot be read as the settings of a gflow run ({e}); start afresh with "
                         "`gflow run ... --restart`.") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: is not the settings of a gflow run (not a JSON object).")
    return ExperimentSettings.from_dict(raw, source=path)


RESUMABLE = (RunStatus.INTERRUPTED, RunStatus.RUNNING, RunStatus.MAX_STEPS)
"""The statuses of a checkpoint that `resume_experiment` can continue (a run stopped at its step
budget continues with a larger one)."""


def unfinished_run(out_dir: str) -> tuple[ExperimentSettings, Trajectory] | None:
    """The settings and checkpoint of an interrupted (or still running) experiment in `out_dir`, or of
    one stopped at its step budget, if any. An unreadable checkpoint is a `ValueError` saying so (and
    that `--restart` discards it)."""
    settings_path, path = os.path.join(out_dir, SETTINGS_FILE), os.path.join(out_dir, TRAJECTORY_FILE)
    if not (os.path.isfile(settings_path) and os.path.isfile(path)):
        return None
    status = read_status(path)
    if status is not None and status not in RESUMABLE:
        return None  # a run that ended: nothing to resume (its weights need not be read)
    try:
        traj = load(path)
    except ValueError as e:
        raise ValueError(f"{e} Pass --restart to discard it and start afresh.") from None
    if traj.ok or traj.status not in RESUMABLE:
        return None
    return read_settings(out_dir), traj


def same_run_but_budget(settings: ExperimentSettings, other: ExperimentSettings) -> bool:
    """Whether two experiments' settings are the same apart from `[flow].max_steps`: the budget decides
    only where a run gives up, never its steps, so a checkpoint of one is a checkpoint of the other."""
    return _with_max_steps(other, settings.record.solver.max_steps).to_dict() == settings.to_dict()


def check_checkpoint_matches(settings: ExperimentSettings, traj: Trajectory, where: str) -> None:
    """Refuse a checkpoint whose record is not the one the settings describe, naming what differs.
    The step budget is not compared: it decides only where a run gives up, never its steps."""
    if traj.record.solver is not None and settings.record.solver is not None:
        traj = _with_budget(traj, settings.record.solver.max_steps)
    differences = settings.record.differences(traj.record)
    if differences:
        shown = "; ".join(differences[:6]) + ("; ..." if len(differences) > 6 else "")
        raise ValueError(f"{where}: its checkpoint {TRAJECTORY_FILE} belongs to another run than its "
                         f"{SETTINGS_FILE} ({shown}); it cannot be resumed. Start afresh with --restart.")


def resume_experiment(out_dir: str, *, progress: bool | None = None, max_steps: int | None = None,
                      echo=print) -> ExperimentResult:
    """Finish the interrupted experiment in `out_dir` (written by `run_experiment`, `gflow run` or
    `gflow demo`), or draw what an interrupted report left out, and write the same report and
    figures as an uninterrupted run.

    `max_steps`: a new step budget per chunk (`[flow].max_steps`), for a run that stopped at its
    old one; the failed chunk is solved again from its first point (`gflow.resume`), and
    `settings.json` is rewritten first with the new budget, so that the folder keeps describing the
    run it holds. The budget decides only where a run gives up, never its steps, so a checkpoint whose
    budget differs from its settings' (a resume with a new budget that was itself interrupted) is the
    same run, and continues with the settings' budget."""
    out_dir = os.fspath(out_dir)
    if not os.path.isfile(os.path.join(out_dir, SETTINGS_FILE)):
        raise ValueError(f"{out_dir!r} holds no {SETTINGS_FILE}: it is not a folder written by `gflow run` or "
                         "`gflow demo` (a Python checkpoint resumes with gflow.resume(path)).")
    with claim_output_folder(out_dir):
        settings = read_settings(out_dir)
        check_writable_folder("out_dir", out_dir)
        path = os.path.join(out_dir, TRAJECTORY_FILE)
        if not os.path.isfile(path):
            raise ValueError(f"{out_dir!r} holds no {TRAJECTORY_FILE} (the run stopped before its first checkpoint); "
                             "start afresh with `gflow run ... --restart`.")
        if max_steps is not None:
            settings = _with_max_steps(settings, max_steps)
        checkpoint, budget = load(path), settings.record.solver.max_steps
        check_checkpoint_matches(settings, checkpoint, out_dir)
        if checkpoint.status == RunStatus.SUCCESS:
            if max_steps is not None and max_steps != checkpoint.record.solver.max_steps:
                raise ValueError(f"--max-steps: the run in {out_dir!r} finished (under max_steps "
                                 f"{checkpoint.record.solver.max_steps}); there is nothing to continue (`gflow "
                                 "resume DIR` alone draws what its report left out).")
        else:  # no budget under which it would not be its run, nor one that stops it where it stopped
            check_resume_budget(checkpoint, budget, "--max-steps" if max_steps is not None else
                                "max_steps (pass a larger --max-steps N)")
        if max_steps is not None:
            with atomic_file(os.path.join(out_dir, SETTINGS_FILE)) as fh:
                json.dump(settings.to_dict(), fh, indent=1)
        new_budget = budget if budget != checkpoint.record.solver.max_steps else None
        with FigureWriter() as writer:
            tic = time.perf_counter()
            traj = resume(path, progress=progress, max_steps=new_budget)
            return _analyse_and_report(settings, traj, out_dir, time.perf_counter() - tic, echo, writer)


def _with_max_steps(settings: ExperimentSettings, max_steps: int) -> ExperimentSettings:
    """`settings` with `[flow].max_steps` replaced (checked as a TOML value would be)."""
    raw = settings.to_dict()
    return ExperimentSettings.from_dict({**raw, "flow": {**raw["flow"], "max_steps": max_steps}},
                                        source="--max-steps")


def _with_budget(traj: Trajectory, max_steps: int) -> Trajectory:
    """`traj` as if its record had the step budget `max_steps` (for comparing records: the budget is
    not part of what a run computes)."""
    solver = dataclasses.replace(traj.record.solver, max_steps=max_steps)
    return dataclasses.replace(traj, record=dataclasses.replace(traj.record, solver=solver))


def _analyse_and_report(settings: ExperimentSettings, traj: Trajectory, out_dir: str, t_flow: float,
                        echo, writer: FigureWriter) -> ExperimentResult:
    spec = traj.spec
    levels = ", ".join(f"{name} {v:.5f}" for name, v in spec.reference_levels().items())
    status = f"{traj.status.value}" + ("" if traj.status == RunStatus.INTERRUPTED else f" ({traj.message})")
    echo(f"flow: {status}; {traj.stats['num_accepted_steps']} accepted and "
         f"{traj.stats['num_rejected_steps']} rejected steps; loss {traj.loss[0]:.5f} -> {traj.loss[-1]:.5f} "
         f"({levels})")
    full, traj = traj, _analysed_part(traj)
    if traj is None:  # nothing to analyse: the report says why, with the run's own status
        reason = unanalysable(full)
        echo(f"analysis: none ({reason})")
        note = f"No analysis: {reason}."
        _write_report(out_dir, settings, full, note, note, {"flow_s": t_flow, "analysis_s": 0.0, "figures_s": 0.0},
                      figures=False)
        echo(f"\nwrote {out_dir}/{REPORT_FILE} and {TRAJECTORY_FILE} (no figures)")
        return ExperimentResult(full, [], [], out_dir, {"flow_s": t_flow, "analysis_s": 0.0, "figures_s": 0.0})
    if traj is not full:
        echo(f"analysis: of the first {len(traj)} saved points ({unanalysable(full)})")
    tic = time.perf_counter()
    echo("analysis: metrics, stage events (re-solving the flow around each), plateau linearisations ...")
    metrics = compute_metrics(traj)
    events = detect_stages(traj, metrics=metrics)
    tic_fig = time.perf_counter()
    early = {"overview": overview_figure(metrics, events, reference_levels=spec.reference_levels()),
             "attention": attention_figure(metrics, events)}
    writer.begin(early, out_dir)  # drawn by the helper process while the plateaus are linearised
    t_fig = time.perf_counter() - tic_fig
    plateaus = plateau_linearization(traj, events)
    task_md, task_figures = _task_analysis(traj)
    t_analysis = time.perf_counter() - tic - t_fig
    stages_md, lin_md = stage_table(events), linearization_table(plateaus)
    echo("\nStages of learning\n" + stages_md + "\n\nLinearisation at each plateau\n" + lin_md + task_md)
    tic = time.perf_counter()
    echo("figures ...")
    figures = early | {"hessian": hessian_figure(plateaus)} | task_figures
    writer.write({name: figures[name] for name in figures if name not in early}, out_dir)
    t_fig += time.perf_counter() - tic
    timings = {"flow_s": t_flow, "analysis_s": t_analysis, "figures_s": t_fig}
    _write_report(out_dir, settings, full, stages_md, lin_md + task_md, timings)
    echo(f"\nwrote {out_dir}/{REPORT_FILE}, {TRAJECTORY_FILE} and figures ({', '.join(figures)}; PNG and PDF)")
    return ExperimentResult(full, events, plateaus, out_dir, timings)


def _analysed_part(traj: Trajectory) -> Trajectory | None:
    """`traj`, or its saved points before the first non-finite one (a run whose last state
    overflowed), or `None` when there are none."""
    n = finite_points(traj)
    return traj if n == len(traj) else traj.head(n) if n else None


def _task_analysis(traj: Trajectory) -> tuple[str, dict]:
    """What a source's own task adds to the report: for a `SparseLagSpec`, the lag events (blocks
    acquired, competition, specialisation; docs/tasks.md) and their figures."""
    spec = traj.spec
    if isinstance(spec, InContextMarkovSpec) and traj.record.loss.method in ("enumerate", "sampled", "dataset"):
        probes = induction_probes(traj)
        heads = detect_induction_events(traj, probes)
        scores = (f"previous-token score (layer 1) {probes.previous_token[0].max():.3f} -> "
                  f"{probes.previous_token[-1].max():.3f}, uniform attention {probes.previous_baseline:.3f}")
        if probes.induction is not None:
            scores += (f"; induction score (layer 2) {probes.induction[0].max():.3f} -> "
                       f"{probes.induction[-1].max():.3f}, uniform attention {probes.induction_baseline:.3f}")
        table = stage_table(heads) if heads else "No head went half-way from uniform attention to its pattern."
        return f"\n\n## Previous-token and induction heads\n\n{scores}.\n\n{table}", {}
    if not isinstance(spec, SparseLagSpec):
        return "", {}
    if spec.n_sequences() > MAX_ENUMERATED_SEQUENCES:
        return (f"\n\nSparse-task events: not computed (the KL probes sum over all V**T = {spec.n_sequences():.3g} "
                f"contexts, above the budget of {MAX_ENUMERATED_SEQUENCES})."), {}
    probes = lag_probes(traj, spec)
    events = detect_lag_events(traj, spec, probes)
    levels = ", ".join(f"{k} blocks {x:.5f}" for k, x in enumerate(probes.levels))
    md = (f"\n\n## Sparse-task events\n\nClass levels: {levels}.\n\n{stage_table(events)}\n\n"
          "![ladder](ladder.png)\n\n![attention by position at the events](attention-maps.png)")
    return md, {"ladder": lag_figure(probes, events), "attention-maps": lag_attention_maps(probes, events)}


def _settings_table(settings: ExperimentSettings) -> str:
    """The settings that make the run, one row per key (unset keys left out), values as TOML writes them."""
    rows = ["| section | key | value |", "|---|---|---|"]
    for section, values in settings.to_dict().items():
        if section == "output":
            continue
        for key, value in values.items():
            rows.append(f"| [{section}] | `{key}` | `{_toml_value(value)}` |")
    return "\n".join(rows)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        text = "[" + ", ".join(_toml_value(v) for v in value) + "]"
        return text if len(text) <= 80 else text[:77] + "..."
    return repr(value)


def _write_report(out_dir, settings, traj, stages_md, lin_md, timings, figures: bool = True):
    s, solver = traj.stats, traj.record.solver
    levels = ", ".join(f"{name} {v:.6f}" for name, v in traj.spec.reference_levels().items())
    lines = [
        "# gflow report", "", _settings_table(settings), "",
        f"Status: **{traj.status}** ({traj.message}). Solver {solver.name}, rtol {solver.rtol:g},"
        f" atol {solver.atol:g}: {s['num_accepted_steps']} accepted, {s['num_rejected_steps']} rejected "
        f"steps, {s['wall_time_s']:.1f} s of integration (flow stage {timings['flow_s']:.1f} s with compilation).",
        "", f"Loss {traj.loss[0]:.6f} → {traj.loss[-1]:.6f}; {levels}.", "",
    ]
    if not figures:  # nothing was analysed (`_analysed_part`): the note says why
        lines += [stages_md, ""]
    else:
        lines += [
            "![overview](overview.png)", "", "## Stages of learning", "", stages_md, "",
            "Cycle k is the stretch of time during which k embedding directions are open.", "",
            "![attention at each event](attention.png)", "", "## Linearisation at each plateau", "", lin_md, "",
            "Predicted escape, a priori: the saddle located by Newton from the state at the plateau's entry (or the "
            "first later state from which a prediction holds), the flow from the saddle plus that state's unstable "
            "component alone (the unstable manifold), timed half-way down its drop; 'linear only' grows the "
            "component exponentially to the same exit scale (docs/analysis.md says what this assumes).", "",
            "![Hessian spectra](hessian.png)", "",
        ]
    with atomic_file(os.path.join(out_dir, REPORT_FILE), encoding="utf-8") as fh:
        fh.write("\n".join(lines))
