"""`Trajectory`: the result of a flow or of discrete training, with the record of how it was made;
`save` and `load` write and read it in the file format of `_file.py`."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..data import AbstractDataSource
from ..losses import LossFunction, loss_and_gradient_norm
from ..model import ParamLayout, TransformerConfig, TransformerParams
from ._file import read_trajectory, write_trajectory
from ._record import RunRecord
from ._status import RunStatus


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

    def method_at(self, i: int) -> str | None:
        """The method that solved this run from saved index `i` to `i + 1`: for the switching default,
        the method of that chunk of the save grid (`stats["chunk_methods"]`, after any fallback from a
        failed explicit chunk); `None` for a run of one solver, a discrete run, or past the chunks
        recorded. A re-solve from a saved state uses it (`run_record(..., method=)`), so that it
        retraces the run with the method the run itself found it needed there."""
        methods = self.stats.get("chunk_methods")
        if not methods or self.record.solver is None:
            return None
        i = int(i) + (len(self) if i < 0 else 0)
        k = i // self.record.solver.chunk_size
        return str(methods[k]) if 0 <= i < len(self) - 1 and k < len(methods) else None

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
        loss, grad_norm = loss_and_gradient_norm(record.loss_function(), record.layout, ys)
        return cls(times=np.asarray(times, dtype=np.float64), params=record.layout.unflatten_many(np.asarray(ys)),
                   loss=np.asarray(loss), grad_norm=np.asarray(grad_norm), record=record, stats=stats or {},
                   status=status, message=message)

    def head(self, n: int) -> Trajectory:
        """The first `n` saved points (with this run's record, stats, status and message): e.g. the
        finite ones of a run whose last state overflowed, for the analysis."""
        if not isinstance(n, int | np.integer) or isinstance(n, bool) or not 1 <= n <= len(self):
            raise ValueError(f"`n` must be an integer in [1, {len(self)}]; got {n!r}.")
        n = int(n)
        return dataclasses.replace(self, times=self.times[:n], params=jax.tree.map(lambda a: a[:n], self.params),
                                   loss=self.loss[:n], grad_norm=self.grad_norm[:n],
                                   steps=None if self.steps is None else self.steps[:n])

    def __repr__(self) -> str:
        t = f"t in [{self.times[0]:.3g}, {self.times[-1]:.3g}]" if len(self) else "empty"
        loss = f", loss {self.loss[0]:.5f} -> {self.loss[-1]:.5f}" if len(self) else ""
        return f"Trajectory({len(self)} points, {t}{loss}, status={self.status.value!r})"

    # ------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the trajectory to `path` (`.npz`, format 2), atomically: a temporary file in the
        same folder is written, then renamed over `path`, so a crash never leaves a half-written file."""
        write_trajectory(path, self)


def load(path: str | os.PathLike) -> Trajectory:
    """Read a trajectory written by `Trajectory.save` (format 2, or format 1 of gflow 0.1).

    Anything else (a missing, truncated, corrupted or foreign file, a directory, a file whose record,
    chain or weights are not consistent) raises one `ValueError` saying that `path` is not a
    readable gflow trajectory, and why.
    """
    return Trajectory(**read_trajectory(path))
