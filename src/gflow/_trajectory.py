"""`Trajectory`: the result of a flow or of discrete training, and its file format.

A trajectory file is one `.npz`: the arrays (times, losses, gradient norms, every weight stacked
over saved times) plus a JSON string `meta` (config, chain, loss method, solver settings, solver
statistics, status, package versions). Only plain arrays are stored, so files load with
`allow_pickle=False` in any numpy.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._markov import MarkovSpec
from ._model import PARAM_NAMES, TransformerConfig, TransformerParams

STATUSES = ("success", "max_steps", "nonfinite", "solver_failure", "interrupted", "running")
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Trajectory:
    """Saved states of a gradient flow (or of a discrete optimiser) with their losses.

    **Fields:**

    - `times`: `(n,)` flow times $t$ of the saved states (for discrete runs $t = \\text{lr} \\cdot k$).
    - `params`: a `TransformerParams` whose arrays carry a leading axis of length `n`.
    - `loss`, `grad_norm`: `(n,)` loss and $\\|\\nabla L\\|$ at each saved state.
    - `steps`: `(n,)` optimiser step index for discrete runs, `None` for flows.
    - `config`, `spec`: the model and the chain.
    - `settings`: how it was computed (loss method, solver, tolerances, the full save grid...).
    - `stats`: solver statistics (accepted/rejected steps, Hessian assemblies of implicit solvers, estimated
      gradient evaluations of explicit ones, stages per step, wall time).
    - `status`: one of `"success"`, `"max_steps"`, `"nonfinite"`, `"solver_failure"`,
      `"interrupted"`, `"running"` (a checkpoint of a run in progress); `message` says it in words.
    """

    times: np.ndarray
    params: TransformerParams
    loss: np.ndarray
    grad_norm: np.ndarray
    config: TransformerConfig
    spec: MarkovSpec
    settings: dict[str, Any]
    stats: dict[str, Any]
    status: str = "success"
    message: str = ""
    steps: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.times.shape[0])

    @property
    def ok(self) -> bool:
        return self.status == "success"

    def params_at(self, i: int) -> TransformerParams:
        """The parameters at saved index `i` (negative indices count from the end)."""
        return jax.tree.map(lambda a: a[i], self.params)

    @property
    def final_params(self) -> TransformerParams:
        return self.params_at(-1)

    def __repr__(self) -> str:
        t = f"t in [{self.times[0]:.3g}, {self.times[-1]:.3g}]" if len(self) else "empty"
        loss = f", loss {self.loss[0]:.5f} -> {self.loss[-1]:.5f}" if len(self) else ""
        return f"Trajectory({len(self)} points, {t}{loss}, status={self.status!r})"

    # ------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the trajectory to `path` (`.npz`), atomically: a temporary file in the same folder
        is written, then renamed over `path`, so a crash never leaves a half-written file."""
        path = os.fspath(path)
        arrays = {"times": np.asarray(self.times), "loss": np.asarray(self.loss),
                  "grad_norm": np.asarray(self.grad_norm)}
        if self.steps is not None:
            arrays["steps"] = np.asarray(self.steps)
        for name in PARAM_NAMES:
            w = getattr(self.params, name)
            if w is not None:
                arrays[f"param.{name}"] = np.asarray(w)
        meta = {
            "format": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "spec": {"P": np.asarray(self.spec.P).tolist(), "init": np.asarray(self.spec.init).tolist(),
                     "T": self.spec.T, "positions": self.spec.positions},
            "settings": _jsonable(self.settings),
            "stats": _jsonable(self.stats),
            "status": self.status,
            "message": self.message,
            "versions": package_versions(),
        }
        arrays["meta"] = np.array(json.dumps(meta))
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".gflow-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise


def load(path: str | os.PathLike) -> Trajectory:
    """Read a trajectory written by `Trajectory.save`."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"`path` {path!r} does not exist; pass the .npz file written by Trajectory.save.")
    with np.load(path, allow_pickle=False) as f:
        if "meta" not in f.files:
            raise ValueError(f"`path` {path!r} is not a gflow trajectory (no 'meta' entry).")
        meta = json.loads(str(f["meta"]))
        arrays = {k: f[k] for k in f.files if k != "meta"}
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path!r} has trajectory format {meta.get('format')!r}; this gflow reads {FORMAT_VERSION}.")
    config = TransformerConfig(**meta["config"])
    s = meta["spec"]
    spec = MarkovSpec(P=jnp.asarray(s["P"], dtype=jnp.float64), init=jnp.asarray(s["init"], dtype=jnp.float64),
                      T=int(s["T"]), positions=s["positions"])
    params = TransformerParams(**{n: jnp.asarray(arrays[f"param.{n}"]) for n in PARAM_NAMES
                                  if f"param.{n}" in arrays})
    return Trajectory(times=arrays["times"], params=params, loss=arrays["loss"], grad_norm=arrays["grad_norm"],
                      config=config, spec=spec, settings=meta["settings"], stats=meta["stats"],
                      status=meta["status"], message=meta["message"], steps=arrays.get("steps"))


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
