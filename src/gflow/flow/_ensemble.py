"""Ensembles: many initial conditions, as independent solves on the CPU cores or as one vmapped
solve sharded over accelerators.

`simulate_many` integrates a batch of initial parameters (seeds, init scales...) on the same data,
loss and save grid. It runs the same chunk loop as `simulate` (`_loop.py`), in one of these ways
(`batching`, one row each of `BATCHING`):

- `"loop"` (the default on CPUs): each member is its own solve, exactly as `simulate` would do it
  (same default solver, same compiled program), one after the other: never slower than a loop of
  `simulate` calls, because it is one.
- `"processes"`: the same solves, handed out to worker processes, each confined to one CPU core
  (`_workers.py`, `common/_pool.py`): a small solve runs faster on one core than spread over two, so
  this is how the cores are used. Scripts need the `if __name__ == "__main__":` guard (the workers
  are spawned).
- `"threads"`: the same solves on a pool of threads. On CPUs this buys nothing: gflow's one-thread
  XLA pool (`common/_threads.py`) runs the threads' solves one after another (1.00x a loop on 2
  cores), and with `GFLOW_CPU_THREADS=all` XLA spreads each solve over the cores and the threads
  contend (0.74-0.9x a loop). Kept for accelerators and for hosts with other settings.
- `"vmap"` (the default on accelerators, and in multi-process jobs): one vmapped solve per chunk
  (`ShardedBatch`), the batch axis laid out over every JAX device (`jax.sharding`): all GPUs of a
  machine, the host devices of `--xla_force_host_platform_device_count`, or, in a multi-process job
  started with `jax.distributed.initialize()`, the devices of every process. Inside the vmapped
  `diffeqsolve` each member keeps its own adaptive step size; the loop runs until the slowest member
  finishes a chunk.

In a multi-process job every process calls `simulate_many` with the same arguments (as in any SPMD
JAX program); each process builds its own shards of the batch, and every process receives all the
members' trajectories (gathered with `multihost_utils.process_allgather`). On CPUs the processes
need a collectives backend (`jax.config.update("jax_cpu_collectives_implementation", "gloo")`
before `jax.distributed.initialize`); on GPUs JAX uses NCCL.
"""

from __future__ import annotations

import abc
import os
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from ..common import progress_bar, shutdown_pool
from ..data import AbstractDataSource
from ..losses import loss_and_gradient_norm
from ..model import TransformerConfig, TransformerParams
from ..record import RunRecord, RunStatus, Trajectory
from ._arguments import (
    DEFAULT_ATOL,
    DEFAULT_MAX_STEPS,
    DEFAULT_N_SAVE,
    DEFAULT_RTOL,
    check_finite_start,
    check_problem,
    flow_record,
)
from ._chunk import AbstractChunkStrategy, ShardedBatch
from ._loop import integrate
from ._plan import RunPlan
from ._workers import solve_members


def stack_params(params_list: list[TransformerParams]) -> TransformerParams:
    """Stack single parameter sets into one batch (leading axis) for `simulate_many`."""
    if not params_list:
        raise ValueError("`params_list` is empty; pass at least one TransformerParams.")
    first = params_list[0]
    for i, p in enumerate(params_list):
        if not isinstance(p, TransformerParams):
            raise ValueError(f"`params_list[{i}]` is a {type(p).__name__}, not a TransformerParams.")
        if jax.tree.structure(p) != jax.tree.structure(first) or any(
                jnp.shape(a) != jnp.shape(b) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(first), strict=True)):
            raise ValueError(f"`params_list[{i}]` does not have the shapes of `params_list[0]`: every member must come "
                             "from the same config and data (same V, d_model, heads, paths).")
    return jax.tree.map(lambda *xs: jnp.stack(xs), *params_list)


class AbstractBatching(abc.ABC):
    """How the members of an ensemble are solved (one row of `BATCHING`)."""

    vmapped: ClassVar[bool] = False
    """The members share one vmapped program (which changes the default solver: `default_solver`)."""

    def __init__(self, workers: int, devices: int):
        self.workers, self.devices = workers, devices

    @property
    def recorded_devices(self) -> int:
        """What the record's `devices` says: the devices a vmapped batch was sharded over, or the
        threads or processes that solved the members one by one."""
        return self.workers

    @abc.abstractmethod
    def run(self, record: RunRecord, y0: np.ndarray, progress: bool | None) -> list[Trajectory]:
        """Every member's trajectory, in member order, each with `stats["ensemble_member"]`."""


class MemberThreads(AbstractBatching):
    """Each member its own solve (the plan's single-state strategy, as `simulate` has it), `workers`
    at a time on a thread pool (one thread: a plain loop)."""

    def run(self, record, y0, progress):
        plan = RunPlan.of(record)
        shared = _CompiledOnce(plan.strategy)
        plan = plan.with_strategy(shared)

        def run(b: int) -> Trajectory:
            (traj,) = integrate(record, plan, y0[b:b + 1], progress=False,
                                member_stats=lambda _: {"ensemble_member": b})
            return traj

        bar = progress_bar(progress, len(y0), 0, desc="gflow ensemble")
        out: list[Trajectory | None] = [None] * len(y0)
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="gflow-member") as pool:
            futures = {pool.submit(run, b): b for b in range(len(y0))}
            try:
                for future in as_completed(futures):
                    out[futures[future]] = future.result()
                    if bar is not None:
                        bar.update(1)
            except KeyboardInterrupt:  # members stop at their next chunk and keep what they computed
                shared.stop.set()
                for future, b in futures.items():
                    out[b] = future.result()
            finally:
                if bar is not None:
                    bar.close()
        return out


class _CompiledOnce(AbstractChunkStrategy):
    """A chunk strategy shared by threads: the first chunk solved compiles the program while the
    others wait for it, so it is compiled once, not once per thread; `stop` interrupts them all."""

    def __init__(self, inner: AbstractChunkStrategy):
        self.inner, self.stop = inner, threading.Event()
        self._first, self._compiled = threading.Lock(), threading.Event()

    def solve(self, plan, states, t0, t1, ts, methods=None, first_steps=None):
        if self.stop.is_set():
            raise KeyboardInterrupt
        if not self._compiled.is_set():
            with self._first:
                if not self._compiled.is_set():
                    out = self.inner.solve(plan, states, t0, t1, ts, methods, first_steps)
                    self._compiled.set()
                    return out
        return self.inner.solve(plan, states, t0, t1, ts, methods, first_steps)


class WorkerProcesses(AbstractBatching):
    """Members on the kept pool of pinned worker processes (`_workers.py`). On Ctrl-C the members not
    yet started are cancelled and come back with their initial point only; the others come back as
    far as they got (each worker stops at its next chunk, as `simulate` does)."""

    def run(self, record, y0, progress):
        futures = solve_members(record, y0, self.workers)
        bar = progress_bar(progress, len(y0), 0, desc="gflow ensemble")
        out: list[Trajectory | None] = [None] * len(y0)
        try:
            for b, future in enumerate(futures):
                out[b] = _from_arrays(record, future.result())
                if bar is not None:
                    bar.update(1)
        except KeyboardInterrupt:
            for b, future in enumerate(futures):
                if out[b] is None and not future.cancel():
                    out[b] = _from_arrays(record, future.result())
            shutdown_pool()
            loss0, gnorm0 = (np.asarray(a) for a in loss_and_gradient_norm(record.loss_function(), record.layout,
                                                                            jax.device_put(y0)))
            for b in range(len(y0)):
                if out[b] is None:
                    out[b] = Trajectory(times=record.save_times[:1].copy(),
                                        params=record.layout.unflatten_many(y0[b:b + 1]),
                                        loss=loss0[b:b + 1], grad_norm=gnorm0[b:b + 1], record=record,
                                        stats={"ensemble_member": b}, status=RunStatus.INTERRUPTED,
                                        message=RunStatus.INTERRUPTED.describe("not started"))
        finally:
            if bar is not None:
                bar.close()
        return out


class ShardedVmap(AbstractBatching):
    """One vmapped solve per chunk for the whole batch, laid out over `devices` (`ShardedBatch`)."""

    vmapped = True

    @property
    def recorded_devices(self) -> int:
        return self.devices

    def run(self, record, y0, progress):
        return integrate(record, RunPlan.of(record, ShardedBatch(self.devices)), y0, progress=progress,
                         member_stats=lambda b: {"ensemble_member": b})


BATCHING: dict[str, type[AbstractBatching]] = {
    "loop": MemberThreads, "processes": WorkerProcesses, "threads": MemberThreads, "vmap": ShardedVmap,
}
"""`batching=` -> how the members are solved (`"auto"` picks `"loop"` on CPUs, `"vmap"` elsewhere)."""


def _from_arrays(record, r: dict) -> Trajectory:
    return Trajectory(times=r["times"], params=record.layout.unflatten_many(r["ys"]),
                      loss=r["loss"], grad_norm=r["grad_norm"], record=record, stats=r["stats"],
                      status=r["status"], message=r["message"])


def _check_batched(params0_batch, source, config) -> None:
    leaves = jax.tree.leaves(params0_batch)
    if not isinstance(params0_batch, TransformerParams) or not leaves or any(jnp.ndim(x) < 1 for x in leaves):
        raise ValueError("`params0_batch` must be TransformerParams with a leading batch axis (see stack_params).")
    try:  # a single, unbatched parameter set passes the checks of one member: say so
        check_problem(params0_batch, source, config)
    except ValueError:
        pass
    else:
        raise ValueError("`params0_batch` is a single parameter set without a leading batch axis; stack members with "
                         "gflow.stack_params([params_a, params_b, ...]) (a batch of one: stack_params([params])).")
    n_batch = leaves[0].shape[0]
    if any(leaf.shape[0] != n_batch for leaf in leaves):
        raise ValueError("every array of `params0_batch` must have the same leading batch size.")


def _check_batching(batching) -> str:
    names = ("auto", *BATCHING)
    if batching not in names:
        raise ValueError(f"`batching` must be one of {names}; got {batching!r}.")
    if batching != "auto":
        return batching
    on_cpu = all(d.platform == "cpu" for d in jax.devices())
    return "loop" if on_cpu and jax.process_count() == 1 else "vmap"


def _check_workers(workers, n_batch: int) -> int:
    if workers is None:
        return max(1, min(os.cpu_count() or 1, n_batch))
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"`workers` must be an integer >= 1 (threads solving members at once); got {workers!r}.")
    return int(min(workers, n_batch))


def simulate_many(params0_batch: TransformerParams, markov_spec: AbstractDataSource, t_span, *,
                  config: TransformerConfig | None = None, loss: str = "auto", n_samples: int | None = None,
                  key=None, dataset=None, solver=None, rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL,
                  save_times=None, n_save: int = DEFAULT_N_SAVE, max_steps: int = DEFAULT_MAX_STEPS,
                  progress: bool | None = None, devices: int | None = None,
                  chunk_size: int | None = None, batching: str = "auto",
                  workers: int | None = None) -> list[Trajectory]:
    """Integrate the flow from every member of `params0_batch` (arrays with a leading batch axis).

    **Arguments:** as `simulate`, plus
    - `batching`: `"loop"` (independent solves one after another; the default on CPUs),
      `"processes"` (the same solves on worker processes, one per core: the fastest on multi-core
      CPUs, in scripts with a main guard), `"threads"`, `"vmap"` (one vmapped solve sharded over
      devices; the default on accelerators and in multi-process jobs), or `"auto"`.
    - `workers`: processes or threads for those two (default: the CPU cores, at most one per member).
    - `devices`: for `"vmap"`, how many of `jax.devices()` to shard the batch over (default all,
      which in a multi-process job means the devices of every process). The batch is padded to a
      multiple of the device count.

    **Returns:** one `Trajectory` per member, each with its own status (a member that fails keeps the
    points it reached; the others are unaffected). In a multi-process job every process gets all of
    them.

    Except under `"vmap"`, each member runs `simulate`'s default solver and program, so its
    trajectory is `simulate`'s to the last bit (docs/performance.md). Under `"vmap"` the default is
    `Kvaerno4`: `GradientFlowBDF`'s "keep or recompute the Hessian" branch would become a select that
    pays an `eigh` at every step.
    """
    _check_batched(params0_batch, markov_spec, config)
    n_batch = jax.tree.leaves(params0_batch)[0].shape[0]
    config = check_problem(jax.tree.map(lambda a: a[0], params0_batch), markov_spec, config)
    n_dev = len(jax.devices()) if devices is None else devices
    if not (isinstance(n_dev, int) and 1 <= n_dev <= len(jax.devices())):
        raise ValueError(f"`devices` must be between 1 and {len(jax.devices())} (jax.devices()); got {devices!r}.")
    name = _check_batching(batching)
    n_workers = _check_workers(workers, n_batch)  # checked whatever the batching, so a typo is caught
    backend = BATCHING[name](1 if name == "loop" else n_workers, n_dev)
    record = flow_record(markov_spec, config, t_span=t_span, loss=loss, n_samples=n_samples, key=key,
                         dataset=dataset, solver=solver, rtol=rtol, atol=atol, save_times=save_times, n_save=n_save,
                         max_steps=max_steps, chunk_size=chunk_size, kind="ensemble", vmapped=backend.vmapped,
                         ensemble_size=n_batch, devices=backend.recorded_devices)
    y0 = record.layout.flatten_many(params0_batch)
    check_finite_start(y0, "params0_batch")
    return backend.run(record, y0, progress)
