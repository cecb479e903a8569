"""`Trajectory`: the result of a flow or of discrete training, and its file format.

A trajectory file is one `.npz`: the arrays (times, losses, gradient norms, every weight stacked
over saved times; a `"dataset"` loss's sequences) plus a JSON string `meta` (the `RunRecord`,
solver statistics, status, package versions). Only plain arrays are stored, so files load with
`allow_pickle=False` in any numpy. Format 2 stores the record; files of format 1 (a flat settings
dict) still load.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import tempfile
import zipfile
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._checks import user_file_mode
from ._layout import ParamLayout
from ._model import PARAM_NAMES, TransformerConfig, TransformerParams, check_params
from ._record import RunRecord
from .data import AbstractDataSource
from .losses import LossFunction

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)


class RunStatus(enum.StrEnum):
    """Every way a run can end (members compare equal to their string values)."""

    SUCCESS = "success"
    MAX_STEPS = "max_steps"
    NONFINITE = "nonfinite"
    SOLVER_FAILURE = "solver_failure"
    INTERRUPTED = "interrupted"
    RUNNING = "running"  # a checkpoint of a run in progress


STATUSES = tuple(s.value for s in RunStatus)


@dataclasses.dataclass(frozen=True)
class Trajectory:
    """Saved states of a gradient flow (or of a discrete optimiser) with their losses.

    **Fields:**

    - `times`: `(n,)` flow times $t$ of the saved states (for discrete runs $t = \\text{lr} \\cdot k$).
    - `params`: a `TransformerParams` whose arrays carry a leading axis of length `n`.
    - `loss`, `grad_norm`: `(n,)` loss and $\\|\\nabla L\\|$ at each saved state.
    - `record`: how it was computed (`RunRecord`: data, model, loss, solver or optimiser, save grid).
    - `stats`: solver statistics (accepted/rejected steps, Hessian assemblies, gradient evaluations
      counted or estimated, stages per step, wall time).
    - `status`: a `RunStatus` (`"success"`, `"max_steps"`, `"nonfinite"`, `"solver_failure"`,
      `"interrupted"`, `"running"`); `message` says it in words.
    - `steps`: `(n,)` optimiser step index for discrete runs, `None` for flows.

    `config`, `spec` and `settings` read the record; `loss_function()`, `params_at(i)` and
    `flat_params()` give what analyses need without rebuilding anything.
    """

    times: np.ndarray
    params: TransformerParams
    loss: np.ndarray
    grad_norm: np.ndarray
    record: RunRecord
    stats: dict[str, Any]
    status: RunStatus | str = RunStatus.SUCCESS
    message: str = ""
    steps: np.ndarray | None = None

    def __post_init__(self):
        object.__setattr__(self, "status", RunStatus(self.status))

    def __len__(self) -> int:
        return int(self.times.shape[0])

    @property
    def ok(self) -> bool:
        return self.status == RunStatus.SUCCESS

    @property
    def config(self) -> TransformerConfig:
        return self.record.config

    @property
    def spec(self) -> AbstractDataSource:
        """The data source (a `MarkovSpec` for chains)."""
        return self.record.source

    @property
    def settings(self) -> dict[str, Any]:
        """The record as a flat dict (the keys of trajectory format 1)."""
        return self.record.settings()

    @property
    def layout(self) -> ParamLayout:
        return self.record.layout

    def loss_function(self) -> LossFunction:
        """The exact loss this trajectory was computed on (its samples, key or dataset included)."""
        return self.record.loss_function()

    def params_at(self, i: int) -> TransformerParams:
        """The parameters at saved index `i` (negative indices count from the end)."""
        return jax.tree.map(lambda a: a[i], self.params)

    @property
    def final_params(self) -> TransformerParams:
        return self.params_at(-1)

    def flat_params(self) -> np.ndarray:
        """`(n, n_params)`: every saved state as one flat vector (the layout the solvers use)."""
        return self.layout.flatten_many(self.params)

    @classmethod
    def from_flat(cls, record: RunRecord, times, ys, *, status: RunStatus | str = RunStatus.SUCCESS,
                  message: str = "", stats: dict[str, Any] | None = None) -> Trajectory:
        """A trajectory from states computed elsewhere (another ODE solver, your own training loop):
        `ys` is `(n, n_params)` in `record.layout`, `times` `(n,)`. The loss and gradient norm are
        evaluated on `record`'s loss, so every analysis works on it as on a gflow run."""
        ys = jnp.asarray(ys, dtype=jnp.float64)
        if ys.ndim != 2 or ys.shape[1] != record.layout.size or ys.shape[0] != np.shape(times)[0]:
            raise ValueError(f"`ys` must have shape (len(times), {record.layout.size}) = ({np.shape(times)[0]}, "
                             f"{record.layout.size}); got {tuple(ys.shape)}.")
        loss, grad_norm = _loss_and_grad_norm(record.loss_function(), record.layout, ys)
        return cls(times=np.asarray(times, dtype=np.float64), params=record.layout.unflatten_many(np.asarray(ys)),
                   loss=np.asarray(loss), grad_norm=np.asarray(grad_norm), record=record, stats=stats or {},
                   status=status, message=message)

    def __repr__(self) -> str:
        t = f"t in [{self.times[0]:.3g}, {self.times[-1]:.3g}]" if len(self) else "empty"
        loss = f", loss {self.loss[0]:.5f} -> {self.loss[-1]:.5f}" if len(self) else ""
        return f"Trajectory({len(self)} points, {t}{loss}, status={self.status.value!r})"

    # ------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the trajectory to `path` (`.npz`), atomically: a temporary file in the same folder
        is written, then renamed over `path`, so a crash never leaves a half-written file."""
        path = os.fspath(path)
        arrays = {"times": np.asarray(self.times), "loss": np.asarray(self.loss),
                  "grad_norm": np.asarray(self.grad_norm)}
        if self.steps is not None:
            arrays["steps"] = np.asarray(self.steps)
        if self.record.loss.dataset is not None:
            arrays["loss.dataset"] = np.asarray(self.record.loss.dataset)
        for name in PARAM_NAMES:
            w = getattr(self.params, name)
            if w is not None:
                arrays[f"param.{name}"] = np.asarray(w)
        meta = {"format": FORMAT_VERSION, "record": self.record.to_json(), "stats": _jsonable(self.stats),
                "status": self.status.value, "message": self.message, "versions": package_versions()}
        arrays["meta"] = np.array(json.dumps(meta))
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".gflow-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
            os.chmod(tmp, user_file_mode())  # mkstemp makes it private (0600); give it the usual permissions
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise


@eqx.filter_jit
def _loss_and_grad_norm(fn: LossFunction, layout: ParamLayout, ys):
    loss, grad = jax.vmap(jax.value_and_grad(lambda y: fn(layout.unflatten(y))))(ys)
    return loss, jnp.linalg.norm(grad, axis=-1)


def load(path: str | os.PathLike) -> Trajectory:
    """Read a trajectory written by `Trajectory.save` (format 2, or format 1 of gflow 0.1).

    Anything else (a missing, truncated, corrupted or foreign file, a directory, a file whose record,
    chain or weights are not consistent) raises one `ValueError` saying that `path` is not a
    readable gflow trajectory, and why.
    """
    try:
        path = os.fspath(path)
    except TypeError:
        raise ValueError(f"`path` must be a file path; got {path!r}.") from None
    if not os.path.exists(path):
        raise ValueError(f"`path` {path!r} does not exist; pass the .npz file written by Trajectory.save.")
    try:
        meta, arrays = _read(path)
        return _from_file(meta, arrays)
    except _UNREADABLE as e:
        raise ValueError(f"{path!r} is not a readable gflow trajectory: {_reason(e)}") from None


_UNREADABLE = (OSError, ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError)


def _reason(e: BaseException) -> str:
    if isinstance(e, KeyError):
        return f"it lacks the entry {e.args[0]!r}."
    if isinstance(e, zipfile.BadZipFile | EOFError):
        return f"it is not a complete .npz archive ({e})."
    return str(e) or type(e).__name__


def _read(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    if os.path.isdir(path):
        raise ValueError("it is a directory; pass the .npz file inside it.")
    loaded = np.load(path, allow_pickle=False)
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ValueError(f"it holds a single {type(loaded).__name__}, not the .npz archive Trajectory.save writes.")
    with loaded as f:
        if "meta" not in f.files:
            raise ValueError("it has no 'meta' entry (not written by Trajectory.save).")
        meta = json.loads(str(f["meta"]))
        arrays = {k: f[k] for k in f.files if k != "meta"}
    if not isinstance(meta, dict):
        raise ValueError("its 'meta' entry is not a JSON object.")
    return meta, arrays


def _from_file(meta: dict, arrays: dict[str, np.ndarray]) -> Trajectory:
    fmt = meta.get("format")
    if fmt not in READABLE_FORMATS:
        raise ValueError(f"it has trajectory format {fmt!r}; this gflow reads formats {READABLE_FORMATS}.")
    if fmt == 1:
        record = RunRecord.from_format1(meta["settings"], meta["spec"], meta["config"], arrays["times"])
    else:
        record = RunRecord.from_json(meta["record"], arrays.get("loss.dataset"))
    params = TransformerParams(**{n: jnp.asarray(arrays[f"param.{n}"]) for n in PARAM_NAMES
                                  if f"param.{n}" in arrays})
    times, loss, grad_norm = (np.asarray(arrays[k], dtype=np.float64) for k in ("times", "loss", "grad_norm"))
    n = times.shape[0]
    lengths = {k: np.shape(v)[0] if np.ndim(v) else None for k, v in arrays.items() if k != "loss.dataset"}
    if times.ndim != 1 or any(length != n for length in lengths.values()):
        raise ValueError(f"its arrays disagree on the number of saved points: {lengths}.")
    if n < 1:
        raise ValueError("it holds no saved point.")
    check_params(jax.tree.map(lambda a: a[0], params), record.config, record.source)
    if meta.get("status") not in STATUSES:
        raise ValueError(f"its status {meta.get('status')!r} is not one of {STATUSES}.")
    return Trajectory(times=times, params=params, loss=loss, grad_norm=grad_norm, record=record,
                      stats=dict(meta.get("stats", {})), status=meta["status"], message=str(meta.get("message", "")),
                      steps=arrays.get("steps"))


def package_versions() -> dict[str, str]:
    out = {}
    for pkg in ("gflow", "jax", "jaxlib", "diffrax", "equinox", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.ndarray, jax.Array)):
        return np.asarray(x).tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x
