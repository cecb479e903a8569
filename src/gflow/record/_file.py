"""The trajectory file format: one `.npz` holding the arrays (times, losses, gradient norms, every
weight stacked over saved times; a `"dataset"` loss's sequences) plus a JSON string `meta` (the
`RunRecord`, solver statistics, status, package versions). Only plain arrays are stored, so files load
with `allow_pickle=False` in any numpy. Format 2 stores the record; files of format 1 (a flat
settings dict) still load.
"""

from __future__ import annotations

import json
import os
import zipfile
from importlib.metadata import PackageNotFoundError, version

import jax
import numpy as np

from ..common import atomic_file
from ..model import check_params, params_from_arrays, params_to_arrays
from ._record import RunRecord
from ._status import STATUSES

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)


def write_trajectory(path: str | os.PathLike, traj) -> None:
    """Write a trajectory's fields (a `Trajectory`: times, loss, grad_norm, steps, params, record,
    stats, status, message) to `path` in format 2, atomically (a temporary file renamed over it)."""
    path = os.fspath(path)
    arrays = {"times": np.asarray(traj.times), "loss": np.asarray(traj.loss),
              "grad_norm": np.asarray(traj.grad_norm)}
    if traj.steps is not None:
        arrays["steps"] = np.asarray(traj.steps)
    if traj.record.loss.dataset is not None:
        arrays["loss.dataset"] = np.asarray(traj.record.loss.dataset)
    arrays.update({f"param.{name}": w for name, w in params_to_arrays(traj.params).items()})
    meta = {"format": FORMAT_VERSION, "record": traj.record.to_json(), "stats": _jsonable(traj.stats),
            "status": traj.status.value, "message": traj.message, "versions": package_versions()}
    arrays["meta"] = np.array(json.dumps(meta))
    with atomic_file(path, "wb") as fh:  # a crash or a full disk never leaves half a file
        np.savez(fh, **arrays)


def read_trajectory(path: str | os.PathLike) -> dict:
    """The fields of the trajectory in a file of format 2 or 1 (`Trajectory(**fields)`), checked.

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


def read_status(path: str | os.PathLike) -> str | None:
    """The status a trajectory file records (`"success"`, `"interrupted"`, ...), read from its metadata
    alone, or `None` when that cannot be read (`read_trajectory` then says why). For a caller that
    only asks whether a run finished: reading and checking every weight cost 0.08 s of a demo."""
    try:
        with np.load(os.fspath(path), allow_pickle=False) as f:
            status = json.loads(str(f["meta"])).get("status")
        return status if status in STATUSES else None
    except (*_UNREADABLE, AttributeError):
        return None


_UNREADABLE = (OSError, ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError,
               RecursionError, OverflowError, MemoryError)


def _reason(e: BaseException) -> str:
    if isinstance(e, RecursionError):
        return "its metadata is nested too deeply to be a gflow record."
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


def _from_file(meta: dict, arrays: dict[str, np.ndarray]) -> dict:
    fmt = meta.get("format")
    if fmt not in READABLE_FORMATS:
        raise ValueError(f"it has trajectory format {fmt!r}; this gflow reads formats {READABLE_FORMATS}.")
    if fmt == 1:
        record = RunRecord.from_format1(meta["settings"], meta["spec"], meta["config"], arrays["times"])
    else:
        record = RunRecord.from_json(meta["record"], arrays.get("loss.dataset"))
    params = params_from_arrays({k.removeprefix("param."): v for k, v in arrays.items() if k.startswith("param.")})
    times, loss, grad_norm = (np.asarray(arrays[k], dtype=np.float64) for k in ("times", "loss", "grad_norm"))
    n = times.shape[0]
    lengths = {k: np.shape(v)[0] if np.ndim(v) else None for k, v in arrays.items() if k != "loss.dataset"}
    if times.ndim != 1 or any(length != n for length in lengths.values()):
        raise ValueError(f"its arrays disagree on the number of saved points: {lengths}.")
    if n < 1:
        raise ValueError("it holds no saved point.")
    if not np.all(np.isfinite(times)) or np.any(np.diff(times) <= 0):
        raise ValueError("its saved times are not finite and strictly increasing (a damaged or edited file).")
    check_params(jax.tree.map(lambda a: a[0], params), record.config, record.source)
    if meta.get("status") not in STATUSES:
        raise ValueError(f"its status {meta.get('status')!r} is not one of {STATUSES}.")
    return dict(times=times, params=params, loss=loss, grad_norm=grad_norm, record=record,
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
