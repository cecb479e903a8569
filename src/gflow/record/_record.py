"""The record of how a trajectory was computed: data, model, loss, solver or optimiser, save grid.

Every `Trajectory` (flow, ensemble member, discrete run) carries one `RunRecord`, and every
trajectory file stores it. Analysis, comparison, resume and reports rebuild what they need from it
(`record.loss_function()`, `record.layout`), so nobody re-derives a run from a settings dict and
nothing (a sampled loss's key, a solver's step budget) can be dropped on the way.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import numpy as np

from ..common import is_integer, is_real, key_data
from ..data import AbstractDataSource, source_from_json
from ..losses import DEFAULT_SAMPLES, LossFunction, LossSpec
from ..model import ParamLayout, TransformerConfig
from ..solvers import check_solver

RUN_KINDS = ("flow", "ensemble", "discrete")


@dataclasses.dataclass(frozen=True)
class SolverSpec:
    """How a flow was integrated: the solver's name, tolerances, step budget per chunk, chunk size.

    `instance` keeps a solver object the user passed (with its own hyper-parameters) for as long as
    the record lives in memory; files store the name, from which `resume` rebuilds the solver.
    """

    name: str
    rtol: float
    atol: float
    max_steps: int
    chunk_size: int
    instance: Any = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self):
        """The same rules whether the spec comes from `simulate`'s arguments or from a file."""
        check_solver(self.name if self.instance is None else self.instance)
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if not (is_real(value) and math.isfinite(float(value)) and float(value) > 0):
                raise ValueError(f"`{name}` must be a number > 0; got {value!r}.")
        for name in ("max_steps", "chunk_size"):
            value = getattr(self, name)
            if not (is_integer(value) and value >= 1):
                raise ValueError(f"`{name}` must be an integer > 0; got {value!r}.")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "rtol": self.rtol, "atol": self.atol, "max_steps": self.max_steps,
                "chunk_size": self.chunk_size}


@dataclasses.dataclass(frozen=True)
class TrainingSpec:
    """How a discrete run was made: optimiser, learning rate, steps, minibatches, flow time per step."""

    optimizer: str
    lr: float
    steps: int
    batch_size: int | None
    time_per_step: float
    dataset_size: int | None = None

    def __post_init__(self):
        if not (is_real(self.lr) and math.isfinite(float(self.lr)) and float(self.lr) > 0):
            raise ValueError(f"`lr` must be a number > 0; got {self.lr!r}.")
        if not (is_integer(self.steps) and self.steps >= 1):
            raise ValueError(f"`steps` must be an integer >= 1; got {self.steps!r}.")
        if self.batch_size is not None and not (is_integer(self.batch_size) and self.batch_size >= 1):
            raise ValueError(f"`batch_size` must be an integer >= 1 or None; got {self.batch_size!r}.")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, eq=False)
class RunRecord:
    """Everything that determines a trajectory.

    - `kind`: `"flow"`, `"ensemble"` (one member of a `simulate_many` batch) or `"discrete"`.
    - `source`, `config`, `loss`: the data, the model, and the loss (`LossSpec`, complete).
    - `t_span`, `save_times`: the time interval and every planned save time (flow time for discrete
      runs: `time_per_step` times the saved step).
    - `solver` (flows and ensembles) or `training` (discrete runs).
    - `ensemble_size`, `devices`: for ensemble members (`devices`: the devices a vmapped batch was
      sharded over, or the threads that solved the members one by one).
    """

    kind: str
    source: AbstractDataSource
    config: TransformerConfig
    loss: LossSpec
    t_span: tuple[float, float]
    save_times: np.ndarray
    solver: SolverSpec | None = None
    training: TrainingSpec | None = None
    ensemble_size: int | None = None
    devices: int | None = None

    def __post_init__(self):
        """The same rules on every path (a run's arguments or a file's record): a crafted or damaged
        file cannot smuggle in a save grid, a chunk or a step budget that no run could have."""
        if self.kind not in RUN_KINDS:
            raise ValueError(f"`kind` must be one of {RUN_KINDS}; got {self.kind!r}.")
        if (self.training is None) == (self.kind == "discrete"):
            raise ValueError("a discrete run's record needs `training`, and a flow's record must not have it.")
        times = np.asarray(self.save_times, dtype=np.float64)
        if times.ndim != 1 or times.size < 1 or not np.all(np.isfinite(times)) or np.any(np.diff(times) <= 0):
            raise ValueError("a record's `save_times` must be finite and strictly increasing.")
        t0, t1 = (float(t) for t in self.t_span)
        if not (math.isfinite(t0) and math.isfinite(t1) and 0 <= t0 <= times[0] and times[-1] <= t1 and t0 < t1):
            raise ValueError(f"a record's `t_span` {self.t_span} must be finite and hold its save times.")
        if self.solver is not None and self.solver.chunk_size > max(1, times.size - 1):
            # a chunk longer than the grid holds the grid (files written before chunks were capped)
            object.__setattr__(self, "solver", dataclasses.replace(self.solver, chunk_size=max(1, times.size - 1)))
        for name in ("ensemble_size", "devices"):
            value = getattr(self, name)
            if value is not None and not (is_integer(value) and value >= 1):
                raise ValueError(f"a record's `{name}` must be an integer >= 1 or None; got {value!r}.")

    @functools.cached_property
    def layout(self) -> ParamLayout:
        """The flat-vector layout of the parameters (made once per record)."""
        return ParamLayout.of(self.config, self.source)

    def loss_function(self) -> LossFunction:
        """The loss this run was computed on, exactly (samples, key or dataset included)."""
        return self.loss.build(self.source, self.config)

    def with_save_times(self, save_times: np.ndarray) -> RunRecord:
        times = np.asarray(save_times, dtype=np.float64)
        return dataclasses.replace(self, save_times=times, t_span=(float(times[0]), float(times[-1])))

    def differences(self, other: RunRecord) -> list[str]:
        """What differs between two records, as `key: this != other` lines (dotted keys of `to_json`,
        plus a dataset's contents): empty exactly when both describe the same run."""
        out = _differences(self.to_json(), other.to_json(), "")
        if self.loss != other.loss and not any(line.startswith("loss") for line in out):
            out.append("loss.dataset: the sequences differ")
        return out

    def same_problem(self, other: RunRecord) -> bool:
        """Same data, model and loss (what two runs need to be compared)."""
        return (self.source.cache_key() == other.source.cache_key() and self.config == other.config
                and self.loss == other.loss)

    # ------------------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """The record as the flat settings dict of trajectory format 1 (`Trajectory.settings`)."""
        loss = {"loss": self.loss.method}
        if self.training is not None:
            t = self.training
            return {"kind": "discrete", "optimizer": t.optimizer, "lr": t.lr, "steps": t.steps,
                    "batch_size": t.batch_size, **loss, "time_per_step": t.time_per_step,
                    "dataset_size": t.dataset_size}
        s = self.solver
        out = {**loss, "n_samples": self.loss.n_samples, "key": None if self.loss.key is None else list(self.loss.key),
               "solver": s.name, "rtol": s.rtol, "atol": s.atol, "max_steps": s.max_steps,
               "t_span": list(self.t_span), "save_grid": self.save_times.tolist(), "chunk_size": s.chunk_size}
        if self.kind == "ensemble":
            out.update(ensemble_size=self.ensemble_size, devices=self.devices)
        return out

    def to_json(self) -> dict[str, Any]:
        """JSON-able form (a `"dataset"` loss's sequences are stored beside it as an array)."""
        return {"kind": self.kind, "source": self.source.to_json(), "config": self.config.to_dict(),
                "loss": self.loss.to_json(), "t_span": list(self.t_span), "save_times": self.save_times.tolist(),
                "solver": None if self.solver is None else self.solver.to_json(),
                "training": None if self.training is None else self.training.to_json(),
                "ensemble_size": self.ensemble_size, "devices": self.devices}

    @classmethod
    def from_json(cls, data: dict[str, Any], dataset: np.ndarray | None = None) -> RunRecord:
        return cls(kind=data["kind"], source=source_from_json(data["source"]),
                   config=TransformerConfig.from_dict(data["config"]), loss=LossSpec.from_json(data["loss"], dataset),
                   t_span=tuple(float(t) for t in data["t_span"]),
                   save_times=np.asarray(data["save_times"], dtype=np.float64),
                   solver=None if data.get("solver") is None else SolverSpec(**data["solver"]),
                   training=None if data.get("training") is None else TrainingSpec(**data["training"]),
                   ensemble_size=data.get("ensemble_size"), devices=data.get("devices"))

    @classmethod
    def from_format1(cls, settings: dict[str, Any], spec: dict[str, Any], config: dict[str, Any],
                     times: np.ndarray) -> RunRecord:
        """The record of a file written by trajectory format 1 (a flat settings dict)."""
        source, config = source_from_json(spec), TransformerConfig.from_dict(config)
        method = settings.get("loss", "auto")
        if method == "sampled":  # format 1 wrote None for the defaults it then used
            key = settings.get("key")
            loss = LossSpec(method, n_samples=settings.get("n_samples") or DEFAULT_SAMPLES,
                            key=tuple(int(k) for k in np.ravel(key)) if key is not None else _seed0_key())
        else:
            loss = LossSpec(method)
        if settings.get("kind") == "discrete":
            training = TrainingSpec(optimizer=settings["optimizer"], lr=settings["lr"], steps=settings["steps"],
                                    batch_size=settings.get("batch_size"), time_per_step=settings["time_per_step"],
                                    dataset_size=settings.get("dataset_size"))
            return cls("discrete", source, config, loss, (float(times[0]), float(times[-1])),
                       np.asarray(times, dtype=np.float64), training=training)
        solver = SolverSpec(name=settings["solver"], rtol=settings["rtol"], atol=settings["atol"],
                            max_steps=settings["max_steps"], chunk_size=settings["chunk_size"])
        kind = "ensemble" if "ensemble_size" in settings else "flow"
        return cls(kind, source, config, loss, tuple(float(t) for t in settings["t_span"]),
                   np.asarray(settings["save_grid"], dtype=np.float64), solver=solver,
                   ensemble_size=settings.get("ensemble_size"), devices=settings.get("devices"))


def _differences(a, b, where: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _differences(a.get(k), b.get(k), f"{where}.{k}" if where else str(k))
        return out
    if a == b:
        return []
    def short(x):
        text = repr(x)
        return text if len(text) <= 40 else text[:37] + "..."
    return [f"{where}: {short(a)} != {short(b)}"]


def _seed0_key() -> tuple[int, ...]:
    return key_data(jax.random.key(0))
