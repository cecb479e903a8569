"""Sweeps: one settings file, a grid of values for some of its keys, one independent run per point.

A sweep file is a `gflow run` settings file with a `[sweep]` table of dotted keys and lists of values,
combined as a grid (`mode = "grid"`, the default) or zipped (`mode = "zip"`):

    [sweep]
    "init.scale" = [1e-2, 1e-3]
    "chain.lam" = [0.4, 0.7]

Every combination is read as settings before anything runs, so a bad value names its key and its
combination. Each run is a job (`run_one`) with an id hashed from its full settings and gflow's
version, computed in `DIR/runs/<id>/` (settings, trajectory, events, log, and its summary row last:
the mark that it is done). Runs share nothing but the folder:

- **resumable**: a run whose `summary.json` is there is not computed again; a deleted run folder is
  recomputed alone; a killed sweep loses only the runs it had in flight;
- **shareable**: a run holds `runs/<id>/.gflow.lock` (`flock`) while it computes, so two sweeps on one
  folder never compute the same run twice (the second waits for it and takes its row);
- **any executor** (`_executors.py`): each run is `simulate` on its own settings, so results are the
  same bit for bit wherever it runs.

`DIR/summary.csv` has one row per run: the swept keys, `run_id`, `status`, `final_loss`, `loss_gap`
(final loss minus the best possible), `first_escape`, `cycles`, `verdict`, `wall_s`, `message`.
`DIR/sweep.json` records the base settings and the grid; a folder holding another sweep (other base
settings) is refused.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import fcntl
import hashlib
import itertools
import json
import math
import os
import time
import tomllib
import traceback
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from ..common import MARKER_FILE, atomic_file, check_output_folder, progress_bar
from ..plot import phase_diagram, save_figure
from ._settings import SCHEMA, ExperimentSettings, chain_schema

MODES = ("grid", "zip")
SUMMARY_COLUMNS = ("run_id", "status", "final_loss", "loss_gap", "first_escape", "cycles", "verdict", "wall_s",
                   "message")
DONE_FILE = "summary.json"


def _gflow_version() -> str:
    try:
        return version("gflow")
    except PackageNotFoundError:
        return "unknown"


@dataclasses.dataclass(frozen=True)
class SweepRun:
    """One point of a sweep: its swept values (dotted key -> value), full settings and id."""

    values: dict[str, Any]
    settings: dict[str, dict[str, Any]]
    run_id: str


@dataclasses.dataclass(frozen=True)
class SweepPlan:
    """A sweep's base settings, its grid, and every run, each checked as settings already."""

    base: dict[str, dict[str, Any]]
    grid: dict[str, list]
    mode: str
    runs: list[SweepRun]

    @property
    def keys(self) -> list[str]:
        return list(self.grid)


def _set_dotted(raw: dict, key: str, value) -> None:
    section, _, name = key.partition(".")
    raw.setdefault(section, {})[name] = value


def _check_key(key, source: str, base: dict) -> None:
    section, dot, name = key.partition(".") if isinstance(key, str) else ("", "", "")
    if not dot or section not in SCHEMA or not name:
        raise ValueError(f"{source}: [sweep] key {key!r} is not a setting: use 'section.key' with a section of "
                         f"{list(SCHEMA)}, such as 'init.scale' or 'chain.lam'.")
    keys = chain_schema(base.get("chain", {}).get("kind", "sticky")) if section == "chain" else SCHEMA[section]
    if name not in keys:
        raise ValueError(f"{source}: [sweep] key {key!r} is not a setting: [{section}] has {sorted(keys)}.")


def plan_sweep(base: dict[str, Any], grid: dict[str, Any], mode: str = "grid", source: str = "sweep") -> SweepPlan:
    """Every run of the sweep, each combination read as settings (a bad one names its key and values)."""
    if not isinstance(base, dict):
        raise ValueError(f"{source}: the base settings must be a table of sections.")
    if mode not in MODES:
        raise ValueError(f"{source}: [sweep].mode must be one of {MODES}; got {mode!r}.")
    if not isinstance(grid, dict) or not grid:
        raise ValueError(f"{source}: [sweep] must map at least one dotted setting name to a list of values.")
    for key, values in grid.items():
        _check_key(key, source, base)
        if not isinstance(values, list) or not values:
            raise ValueError(f"{source}: [sweep] {key!r} must be a non-empty list of values; got {values!r}.")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise ValueError(f"{source}: [sweep] {key!r} repeats a value; each run must differ.")
    keys = list(grid)
    if mode == "zip":
        lengths = {key: len(grid[key]) for key in keys}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"{source}: mode = 'zip' needs lists of one length; got {lengths}.")
        combos = list(zip(*(grid[key] for key in keys), strict=True))
    else:
        combos = list(itertools.product(*(grid[key] for key in keys)))
    base_settings = ExperimentSettings.from_dict(copy.deepcopy(base), source=f"{source} (base settings)").to_dict()
    runs = []
    for combo in combos:
        values = dict(zip(keys, combo, strict=True))
        raw = copy.deepcopy(base)
        for key, value in values.items():
            _set_dotted(raw, key, value)
        where = ", ".join(f"{k} = {v!r}" for k, v in values.items())
        settings = ExperimentSettings.from_dict(raw, source=f"{source} [sweep] {where}").to_dict()
        digest = hashlib.sha256(json.dumps({"settings": settings, "gflow": _gflow_version()}, sort_keys=True,
                                           default=repr).encode()).hexdigest()[:16]
        runs.append(SweepRun(values, settings, digest))
    return SweepPlan(base_settings, {k: list(v) for k, v in grid.items()}, mode, runs)


def read_sweep_file(path: str) -> SweepPlan:
    """The sweep a TOML file describes (`[sweep]` plus ordinary settings)."""
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode("utf-8-sig")
        raw = tomllib.loads(text)
    except FileNotFoundError:
        raise ValueError(f"sweep file {path!r} does not exist.") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"{path}: not a readable TOML file ({e}).") from None
    table = raw.pop("sweep", None)
    if not isinstance(table, dict):
        raise ValueError(f"{path}: a sweep file needs a [sweep] table of dotted keys and lists of values.")
    table = dict(table)
    mode = table.pop("mode", "grid")
    return plan_sweep(raw, table, mode, source=path)


# ----------------------------------------------------------------------------------------------
# one run: a job for any executor (a module-level function of plain arguments, so it pickles)


def run_one(settings: dict, run_dir: str, values: dict) -> dict:
    """Compute one run of a sweep in `run_dir` (or return its row if it is done), holding the run's
    lock while it works: a second process asking for the same run waits, then takes the row."""
    os.makedirs(run_dir, exist_ok=True)
    fd = os.open(os.path.join(run_dir, ".gflow.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks while another process computes this run
        done = read_row(run_dir)
        if done is not None:
            return done
        return _compute(settings, run_dir, values)
    finally:
        os.close(fd)


def read_row(run_dir: str) -> dict | None:
    """The finished run's summary row, or `None` when it is not (completely) done."""
    try:
        with open(os.path.join(run_dir, DONE_FILE), encoding="utf-8") as fh:
            row = json.load(fh)
    except (OSError, ValueError):
        return None
    return row if isinstance(row, dict) and "status" in row else None


def _compute(settings: dict, run_dir: str, values: dict) -> dict:
    from ..analysis import detect_stages
    from ..flow import run_record

    tic = time.perf_counter()
    row = {"run_id": os.path.basename(run_dir), **values}
    log = []
    try:
        s = ExperimentSettings.from_dict(settings, source=os.path.join(run_dir, "settings.json"))
        with atomic_file(os.path.join(run_dir, "settings.json"), encoding="utf-8") as fh:
            json.dump(settings, fh, indent=1)
        traj = run_record(s.record, s.initial_params(), progress=False,
                          checkpoint=os.path.join(run_dir, "trajectory.npz"))
        log.append(f"flow: {traj.status.value} ({traj.message}); {traj.stats.get('num_accepted_steps')} steps")
        events = detect_stages(traj)
        with atomic_file(os.path.join(run_dir, "events.json"), encoding="utf-8") as fh:
            json.dump([_event_json(e) for e in events], fh, indent=1)
        best = traj.spec.best_loss()
        escapes = [e.time for e in events if e.kind == "escape"]
        final = [e for e in events if e.kind == "plateau" and e.details.get("final")]
        row.update(status=traj.status.value, final_loss=float(traj.loss[-1]),
                   loss_gap=float(traj.loss[-1] - best) if best is not None else math.nan,
                   first_escape=escapes[0] if escapes else math.nan,
                   cycles=max((e.cycle for e in events), default=0),
                   verdict=final[0].details.get("verdict", "") if final else "", message=traj.message)
    except Exception as e:  # noqa: BLE001 - a failed run is a row with its reason, not a crashed sweep
        row.update(status="error", final_loss=math.nan, loss_gap=math.nan, first_escape=math.nan, cycles=0,
                   verdict="", message=f"{type(e).__name__}: {e}")
        log.append(traceback.format_exc())
    row["wall_s"] = time.perf_counter() - tic
    with atomic_file(os.path.join(run_dir, "log.txt"), encoding="utf-8") as fh:
        fh.write("\n".join(log) + "\n")
    with atomic_file(os.path.join(run_dir, DONE_FILE), encoding="utf-8") as fh:  # last: the run is done
        json.dump(row, fh, indent=1)
    return row


def _event_json(e) -> dict:
    return {"kind": e.kind, "time": e.time, "uncertainty": e.uncertainty, "cycle": e.cycle, "weak": e.weak,
            "details": {k: (v if isinstance(v, str | int | float | bool | type(None)) else repr(v))
                        for k, v in e.details.items()}}


# ----------------------------------------------------------------------------------------------
# the sweep


@dataclasses.dataclass(frozen=True)
class SweepResult:
    out: str
    rows: list[dict]
    computed: int
    wall_s: float


def _check_folder(out: str, plan: SweepPlan) -> None:
    """Refuse a folder that holds another sweep (other base settings); record this one's."""
    path = os.path.join(out, "sweep.json")
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as fh:
                known = json.load(fh)
        except (OSError, ValueError):
            raise ValueError(f"{path}: cannot be read; is {out!r} a gflow sweep folder?") from None
        if known.get("base") != plan.base:
            raise ValueError(f"{out!r} holds another sweep (other base settings); choose another folder, or sweep "
                             "the same base settings to add runs to it.")
        grid = known.get("grid", {})
        for key, values in plan.grid.items():  # the union of the grids: a sweep that adds values
            grid[key] = grid.get(key, []) + [v for v in values if v not in grid.get(key, [])]
    else:
        grid = plan.grid
    with atomic_file(path, encoding="utf-8") as fh:
        json.dump({"base": plan.base, "grid": grid, "mode": plan.mode, "gflow": _gflow_version()}, fh, indent=1)


def sweep(settings, grid: dict[str, list] | None = None, *, mode: str = "grid", out: str = "gflow-sweep",
          executor="local", workers: int | None = None, address: str | None = None, plot: str | None = "loss_gap",
          progress: bool | None = None, echo=print) -> SweepResult:
    """Run every point of a sweep, each as its own job, and write `out/summary.csv` and `out/phase.png`.

    **Arguments:**

    - `settings`: the base settings (`ExperimentSettings`, or a dict of sections) with `grid` (dotted
      key -> list of values), or a sweep file's path (its `[sweep]` table is the grid).
    - `mode`: `"grid"` (every combination) or `"zip"` (the lists side by side).
    - `executor`: `"local"` (worker processes, one per core), `"dask"`, `"ray"`, `"submitit"`, or any
      `concurrent.futures.Executor`; `workers`, `address`: for the named ones.
    - `plot`: the summary column of the phase figure (`None`: no figure).

    **Returns:** a `SweepResult` (rows in the plan's order). Finished runs are not computed again.
    """
    tic = time.perf_counter()
    if isinstance(settings, str | os.PathLike):
        if grid is not None:
            raise ValueError("give the grid in the sweep file's [sweep] table, or settings and a grid, not both.")
        plan = read_sweep_file(os.fspath(settings))
    else:
        base = settings.to_dict() if isinstance(settings, ExperimentSettings) else settings
        plan = plan_sweep(base, grid, mode)
    out = os.fspath(out)
    check_output_folder(out)  # never into another program's files; several sweeps may share one folder
    os.makedirs(out, exist_ok=True)
    with atomic_file(os.path.join(out, MARKER_FILE)) as fh:
        fh.write("A gflow sweep: `gflow sweep` may write here.\n")
    _check_folder(out, plan)
    runs_dir = os.path.join(out, "runs")
    rows: dict[str, dict] = {}
    todo = []
    for run in plan.runs:
        row = read_row(os.path.join(runs_dir, run.run_id))
        if row is None:
            todo.append(run)
        else:
            rows[run.run_id] = row
    echo(f"gflow sweep: {len(plan.runs) - len(todo)} of {len(plan.runs)} done, {len(todo)} to run")
    if todo:
        _compute_all(plan, todo, runs_dir, rows, executor, workers, address, progress, out)
    ordered = [rows[run.run_id] for run in plan.runs]
    _write_summary(out, plan, ordered)
    if plot is not None and ordered:
        save_figure(phase_diagram(ordered, plan.keys, column=plot), os.path.join(out, "phase"))
    failed = sum(r["status"] not in ("success",) for r in ordered)
    echo(f"gflow sweep: {len(ordered)} runs ({failed} not successful); wrote {out}/summary.csv"
         + (f" and {out}/phase.png" if plot is not None else ""))
    return SweepResult(out, ordered, len(todo), time.perf_counter() - tic)


def _compute_all(plan, todo, runs_dir, rows, executor, workers, address, progress, out) -> None:
    import concurrent.futures as cf

    from ._executors import open_executor

    context = (open_executor(executor, workers=workers, address=address, folder=out) if isinstance(executor, str)
               else _given(executor))
    bar = progress_bar(progress, len(todo), 0, desc="gflow sweep", unit="run")
    failed = 0
    with context as pool:
        futures = {pool.submit(run_one, run.settings, os.path.join(runs_dir, run.run_id), run.values): run
                   for run in todo}
        try:
            for future in cf.as_completed(futures):
                run = futures[future]
                row = future.result()
                rows[run.run_id] = row
                failed += row["status"] != "success"
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(f"failed {failed}")
                _write_summary(out, plan, [rows[r.run_id] for r in plan.runs if r.run_id in rows])
        finally:
            if bar is not None:
                bar.close()


@contextlib.contextmanager
def _given(executor):
    if not hasattr(executor, "submit"):
        raise ValueError(f"`executor` must be a name or a concurrent.futures.Executor; got {type(executor)!r}.")
    yield executor


def _write_summary(out: str, plan: SweepPlan, rows: list[dict]) -> None:
    columns = plan.keys + [c for c in SUMMARY_COLUMNS if c not in plan.keys]
    with atomic_file(os.path.join(out, "summary.csv"), newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _csv_value(row.get(c, "")) for c in columns})


def _csv_value(v):
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, list | dict):
        return json.dumps(v)
    return v


def read_summary(path: str) -> list[dict]:
    """The rows of a `summary.csv` (numbers as floats where they parse)."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for k, v in row.items():
            try:
                row[k] = float(v) if k not in ("run_id", "status", "verdict", "message") else v
            except (TypeError, ValueError):
                pass
    return rows
