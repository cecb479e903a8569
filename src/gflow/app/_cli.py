"""The `gflow` command: `gflow demo`, `gflow run CONFIG.toml`, `gflow resume DIR`, `gflow compare`.

Exit status: 0 when the flow finished, 1 when it stopped early (max_steps, non-finite state, solver
failure; the partial results are written), 2 for bad input (nothing is computed), 130 when
interrupted by Ctrl-C (the checkpoint is written; `gflow resume DIR` finishes it).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

from ..common import DiskFullError, claim_output_folder
from ..flow import check_resume_budget, make_optimizer
from ..plot import PHASE_COLUMNS
from ..record import RunStatus, load, read_status
from ._comparison import DEFAULT_RUNS, run_comparison
from ._executors import EXECUTORS
from ._experiment import (
    REPORT_FILE,
    SETTINGS_FILE,
    TRAJECTORY_FILE,
    check_checkpoint_matches,
    read_settings,
    resume_experiment,
    run_experiment,
    same_run_but_budget,
    unfinished_run,
)
from ._settings import ExperimentSettings
from ._sweep import sweep

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gflow")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gflow", description="Exact gradient flow of a one-layer Transformer on "
                                "Markov data: simulate, mark the stages of learning, draw and report.")
    p.add_argument("--version", action="version", version=f"gflow {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the focus-dilution setting (sticky chain, d_model = 8, t to 1e5)")
    demo.add_argument("--out", default="gflow-demo", help="output folder (default: ./gflow-demo)")
    run = sub.add_parser("run", help="an experiment described by a TOML file (see docs/cli.md)")
    run.add_argument("config", help="path of the TOML file")
    run.add_argument("--out", default=None, help="output folder (default: [output].dir of the file)")
    for s in (demo, run):
        again = s.add_mutually_exclusive_group()
        again.add_argument("--resume", action="store_true", help="if the folder holds an interrupted run of these "
                           "settings, finish it (a finished one is left as it is)")
        again.add_argument("--restart", action="store_true", help="start afresh even if the folder holds an "
                           "interrupted run")
    res = sub.add_parser("resume", help="finish an interrupted `gflow run`/`gflow demo` in its output folder")
    res.add_argument("dir", help="the output folder of the interrupted run")
    res.add_argument("--max-steps", type=int, default=None, help="a new step budget per chunk, for a run that "
                     "stopped at its old one ([flow].max_steps; settings.json is updated)")
    cmp = sub.add_parser("compare", help="GD, SGD and Adam against the flow, on the settings of a TOML file")
    cmp.add_argument("config", nargs="?", default=None, help="TOML file (default: the demo settings)")
    cmp.add_argument("--out", default="gflow-compare", help="output folder (default: ./gflow-compare)")
    cmp.add_argument("--t-end", type=float, default=3000.0, help="flow time to compare over (default 3000)")
    swp = sub.add_parser("sweep", help="a grid of settings (a TOML file with a [sweep] table), one run per point; "
                         "resumable; summary.csv and phase.png (docs/sweeps.md)")
    swp.add_argument("config", help="the sweep file: settings plus a [sweep] table of dotted keys and value lists")
    swp.add_argument("--out", default="gflow-sweep", help="output folder (default: ./gflow-sweep)")
    swp.add_argument("--executor", default="local", choices=EXECUTORS, help="where the runs are computed")
    swp.add_argument("--workers", type=int, default=None, help="worker processes (default: the CPU cores)")
    swp.add_argument("--address", default=None, help="a Dask scheduler or Ray cluster to run on")
    swp.add_argument("--plot", default="loss_gap", choices=tuple(PHASE_COLUMNS), help="the summary column of phase.png")
    for s in (demo, run, res, cmp, swp):
        s.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _error(message: str) -> int:
    print(f"gflow: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _exit_status(traj) -> int:
    if traj.ok:
        return EXIT_OK
    return EXIT_INTERRUPTED if traj.status == RunStatus.INTERRUPTED else EXIT_FAILED


def _settle_unfinished(settings: ExperimentSettings, out_dir: str, args) -> str | None:
    """What to do with an unfinished run already in `out_dir`: "resume", "restart", or an error message.
    With `--restart` the folder's checkpoint is not even read (it may be the unreadable file that
    stops everything else).

    A run whose settings differ from the file's only in `[flow].max_steps` is the same run (the
    budget never changes a step): it resumes with the file's budget, as `gflow resume DIR
    --max-steps N` would, but never with a smaller one (`check_resume_budget`). A run stopped at its
    budget resumes only with a larger one (with its own it would stop at the same step again);
    otherwise it starts afresh, as a run that ended does, or with `--resume` stops with a message.
    Other settings are never resumed."""
    if args.restart:
        return "restart"
    try:
        found = unfinished_run(out_dir)
    except ValueError as e:
        return str(e)
    if found is None:
        return _nothing_to_resume(settings, out_dir) if args.resume else "restart"
    old_budget, budget = found[1].record.solver.max_steps, settings.record.solver.max_steps
    same = same_run_but_budget(settings, found[0])
    if found[1].status == RunStatus.MAX_STEPS and budget <= old_budget and not args.resume:
        return "restart"  # as a run that ended: its own budget would stop it at the same step again
    where = f"{out_dir!r} holds an unfinished run ({found[1].status.value} at t = {found[1].times[-1]:.6g})"
    if not same:
        return (f"{where} of other settings; choose another --out, or pass --restart to overwrite it.")
    if budget != old_budget:
        try:
            check_resume_budget(found[1], budget, "[flow].max_steps")
        except ValueError as e:
            return f"{where} of these settings but another step budget; {e} Or pass --restart."
    elif found[1].status == RunStatus.MAX_STEPS:  # --resume with its own budget
        return (f"{out_dir!r} holds a run that stopped at its step budget (max_steps {old_budget}) at t = "
                f"{found[1].times[-1]:.6g}; with that budget it would stop there again. Raise [flow].max_steps "
                f"above {old_budget} to continue it (or `gflow resume {out_dir} --max-steps N`), or pass --restart "
                "to start afresh.")
    try:
        check_checkpoint_matches(settings, found[1], out_dir)
    except ValueError as e:
        return str(e)
    these = "these settings"
    if budget != old_budget:
        these += f" (max_steps {old_budget}; it continues with {budget})"
    if args.resume:
        return "resume"
    if sys.stdin.isatty():
        answer = input(f"gflow: {where} of {these}. Resume it? [Y/n] ").strip().lower()
        return "restart" if answer in ("n", "no") else "resume"
    return f"{where} of {these}; pass --resume to finish it (or `gflow resume {out_dir}`), or --restart."


def _nothing_to_resume(settings: ExperimentSettings, out_dir: str) -> str:
    """`--resume` where no unfinished run is: "restart" into a folder without a run (resume if there is
    one, else run), "done" where the folder holds this run finished (its results are there: nothing is
    recomputed), "report" where only its report is missing, else an error message. A run that ended
    in failure, or one of other settings, is not silently overwritten by a command that asked to
    continue it."""
    status = read_status(os.path.join(out_dir, TRAJECTORY_FILE))
    if status is None or not os.path.isfile(os.path.join(out_dir, SETTINGS_FILE)):
        return "restart"
    same = same_run_but_budget(settings, read_settings(out_dir))
    if status == RunStatus.SUCCESS and same:
        try:
            check_checkpoint_matches(settings, load(os.path.join(out_dir, TRAJECTORY_FILE)), out_dir)
        except ValueError as e:
            return str(e)
        # a report that was never written (the analysis interrupted) is what is left to do
        return "done" if os.path.isfile(os.path.join(out_dir, REPORT_FILE)) else "report"
    what = "a finished run" if status == RunStatus.SUCCESS else f"a run that ended ({status})"
    if not same:
        what += " of other settings"
    return (f"{out_dir!r} holds {what}: there is nothing to resume. Pass --restart to overwrite it, or choose "
            "another --out.")


def main(argv: list[str] | None = None) -> int:
    """The `gflow` command line on `argv` (default: the process's arguments); returns the exit status."""
    return _main(_parser().parse_args(argv))


def console_main() -> None:
    """The `gflow` console script: `main`, then an exit that skips the interpreter's teardown.

    Once a command has returned, every file it wrote is complete and closed (each is written beside
    its target and renamed over it) and its helper process has been waited for; what remains is
    Python collecting every object and JAX closing its runtime, 0.4-0.5 s after a demo (measured
    2026-12-03, a fifth of a warm demo's start-up and analysis on 2 cores). `sweep` exits the usual
    way: its executors (Dask, Ray) may stop their workers from exit handlers."""
    args = _parser().parse_args()
    status = _main(args)
    if args.command == "sweep":
        sys.exit(status)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that went away (`gflow demo | head`), a closed stream
            pass
    os._exit(status)


def _main(args) -> int:
    progress = False if args.no_progress else None
    try:
        return _command(args, progress)
    except DiskFullError as e:
        where = getattr(args, "out", None) or getattr(args, "dir", None)
        then = f"; then finish with: gflow resume {where}" if where and args.command != "compare" else ""
        print(f"gflow: error: {e.strerror}{then}.", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:  # outside the flow (which keeps its points itself): analysis, figures, report
        where = getattr(args, "out", None) or getattr(args, "dir", None)
        again = f" Finish it with: gflow resume {where}" if where and args.command != "compare" else ""
        print(f"\ngflow: interrupted; every file written so far is complete (each is replaced only when "
              f"whole).{again}", file=sys.stderr)
        return EXIT_INTERRUPTED


def _command(args, progress) -> int:
    try:
        if args.command == "sweep":
            if args.workers is not None and args.workers < 1:
                return _error(f"--workers must be at least 1; got {args.workers}.")
            result = sweep(args.config, out=args.out, executor=args.executor, workers=args.workers,
                           address=args.address, plot=args.plot, progress=progress)
            return EXIT_OK if all(r["status"] == "success" for r in result.rows) else EXIT_FAILED
        if args.command == "resume":
            if args.max_steps is not None and args.max_steps < 1:
                return _error(f"--max-steps must be at least 1; got {args.max_steps}.")
            tic = time.perf_counter()
            result = resume_experiment(args.dir, progress=progress, max_steps=args.max_steps)
            return _finish(result, tic)
        if args.command == "demo" or (args.command == "compare" and args.config is None):
            settings = ExperimentSettings.demo()
        else:
            settings = ExperimentSettings.from_toml(args.config)
        if args.command == "compare":
            shortest = max(make_time_per_step(opt, lr) for opt, lr, _ in DEFAULT_RUNS)
            if not (math.isfinite(args.t_end) and args.t_end >= shortest):
                return _error(f"--t-end must be a finite number > 0 and at least {shortest:g} (one step of every "
                              f"discrete run); got {args.t_end!r}.")
            run_comparison(settings, args.out, t_end=args.t_end, progress=progress)
            return EXIT_OK
        out_dir = os.fspath(args.out or settings.output["dir"])
        print(f"gflow: writing to {os.path.abspath(out_dir)}", file=sys.stderr)
        with claim_output_folder(out_dir):  # held from the decision to the last file
            decision = _settle_unfinished(settings, out_dir, args)
            tic = time.perf_counter()
            if decision == "done":
                print(f"gflow: {out_dir} already holds this run, finished; nothing to resume (its report is "
                      f"{os.path.join(out_dir, REPORT_FILE)}; --restart runs it again).")
                return EXIT_OK
            if decision == "resume":
                result = resume_experiment(out_dir, progress=progress, max_steps=settings.record.solver.max_steps)
            elif decision == "report":  # a finished run whose report was not written: only that is left
                result = resume_experiment(out_dir, progress=progress)
            elif decision == "restart":
                result = run_experiment(settings, out_dir, progress=progress)
            else:
                return _error(decision)
            return _finish(result, tic)
    except ValueError as e:
        return _error(str(e))


def make_time_per_step(optimizer: str, lr: float) -> float:
    """Flow time of one step of a discrete run (`gflow compare`'s)."""
    return make_optimizer(optimizer, lr)[2]


def _finish(result, tic: float) -> int:
    print(f"total {time.perf_counter() - tic:.1f} s (flow {result.timings['flow_s']:.1f} s incl. compilation, "
          f"analysis {result.timings['analysis_s']:.1f} s, figures {result.timings['figures_s']:.1f} s)")
    if result.trajectory.status == RunStatus.INTERRUPTED:
        print(f"gflow: the run was interrupted; finish it with: gflow resume {result.out_dir}", file=sys.stderr)
    return _exit_status(result.trajectory)


if __name__ == "__main__":
    raise SystemExit(main())
