"""Ensembles: many initial conditions, as independent solves on the CPU cores or as one vmapped
solve sharded over accelerators.

`simulate_many` integrates a batch of initial parameters (seeds, init scales...) on the same data,
loss and save grid. It runs the same integration core as `simulate` (`_integrate.py`), in one of
these ways (`batching`):

- `"loop"` (the default on CPUs): each member is its own solve, exactly as `simulate` would do it
  (same default solver, same compiled program), one after the other: never slower than a loop of
  `simulate` calls, because it is one.
- `"processes"`: the same solves, handed out to worker processes, each confined to one CPU core
  (`_workers.py`): a small solve runs faster on one core than spread over two, so this is how the
  cores are used. Scripts need the `if __name__ == "__main__":` guard (the workers are spawned).
- `"threads"`: the same solves on a pool of threads. On CPUs XLA already spreads one solve over the
  cores, so threads only contend (measured: 0.74-0.9x a loop on 2 cores).
- `"vmap"` (the default on accelerators, and in multi-process jobs): one vmapped solve per chunk,
  the batch axis laid out over every JAX device
(`jax.sharding`): all GPUs of a machine, the host devices of `--xla_force_host_platform_device_count`,
or, in a multi-process job started with `jax.distributed.initialize()`, the devices of every process.
Inside the vmapped `diffeqsolve` each member keeps its own adaptive step size; the loop runs until
the slowest member finishes a chunk.

In a multi-process job every process calls `simulate_many` with the same arguments (as in any SPMD
JAX program); each process builds its own shards of the batch, and every process receives all the
members' trajectories (gathered with `multihost_utils.process_allgather`). On CPUs the processes
need a collectives backend (`jax.config.update("jax_cpu_collectives_implementation", "gloo")`
before `jax.distributed.initialize`); on GPUs JAX uses NCCL.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ._flow import check_problem, flow_record, solver_setup
from ._integrate import (
    DEFAULT_ATOL,
    DEFAULT_MAX_STEPS,
    DEFAULT_N_SAVE,
    DEFAULT_RTOL,
    ChunkSolver,
    GradientField,
    _values_and_norms,
    check_finite_start,
    check_flow_arguments,
    integrate,
    progress_bar,
    single_chunk_solver,
    solve_many,
)
from ._model import TransformerConfig, TransformerParams
from ._trajectory import Trajectory
from .data import AbstractDataSource
from .losses import loss_spec


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


def _batch_sharding(n_devices: int) -> NamedSharding:
    mesh = Mesh(np.asarray(jax.devices()[:n_devices]), ("batch",))
    return NamedSharding(mesh, PartitionSpec("batch"))


def _to_devices(batch: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array laid out by `sharding`, built from a host copy that every process holds.

    Each process fills only its own shards, so this works whether or not the sharding spans devices
    of other processes (`jax.device_put` of host data needs every device to be local).
    """
    batch = np.asarray(batch)
    return jax.make_array_from_callback(batch.shape, sharding, lambda index: batch[index])


def _to_host(array) -> np.ndarray:
    """The whole of a (possibly multi-process) batched array as numpy, on every process."""
    if not isinstance(array, jax.Array) or array.is_fully_addressable:
        return np.asarray(array)
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def _sharded_chunk_solver(field: GradientField, setup, max_steps: int, n_devices: int) -> ChunkSolver:
    """Solve a chunk for the whole batch, padded to a multiple of the device count and sharded."""
    sharding = _batch_sharding(n_devices)

    def solve(y, t0, t1, ts):
        n = len(y)
        padded = np.concatenate([y, np.repeat(y[-1:], (-n) % n_devices, axis=0)])
        out = solve_many(field, setup.solver, setup.controller, _to_devices(padded, sharding), t0, t1,
                         jnp.asarray(ts), max_steps)
        return jax.tree.map(lambda a: _to_host(a)[:n], out)

    return solve


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
    args = check_flow_arguments(t_span, rtol=rtol, atol=atol, max_steps=max_steps, save_times=save_times,
                                n_save=n_save, chunk_size=chunk_size)
    n_dev = len(jax.devices()) if devices is None else devices
    if not (isinstance(n_dev, int) and 1 <= n_dev <= len(jax.devices())):
        raise ValueError(f"`devices` must be between 1 and {len(jax.devices())} (jax.devices()); got {devices!r}.")
    batching = _check_batching(batching)
    n_workers = _check_workers(workers, n_batch)  # checked whatever the batching, so a typo is caught
    if batching == "loop":
        n_workers = 1
    spec = loss_spec(markov_spec, config, loss, n_samples=n_samples, key=key, dataset=dataset)
    record = flow_record(markov_spec, config, spec, t_span=args.t_span, grid=args.grid, solver=solver,
                         rtol=args.rtol, atol=args.atol, max_steps=args.max_steps, chunk_size=args.chunk_size,
                         kind="ensemble", ensemble_size=n_batch, vmapped=batching == "vmap",
                         devices=n_dev if batching == "vmap" else n_workers)
    setup = solver_setup(record)
    field = GradientField(loss=record.loss_function(), layout=record.layout)
    y0 = record.layout.flatten_many(params0_batch)
    check_finite_start(y0, "params0_batch")
    if batching == "processes":
        return _in_processes(record, field, y0, n_workers, progress)
    if batching != "vmap":  # "loop" is the thread pool with one thread
        return _threaded(record, setup, field, y0, n_workers, progress)
    return integrate(record, setup, field, _sharded_chunk_solver(field, setup, args.max_steps, n_dev), y0,
                     progress=progress, member_stats=lambda b: {"ensemble_member": b})


BATCHING = ("auto", "loop", "processes", "threads", "vmap")


def _check_batching(batching) -> str:
    if batching not in BATCHING:
        raise ValueError(f"`batching` must be one of {BATCHING}; got {batching!r}.")
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


def _threaded(record, setup, field: GradientField, y0: np.ndarray, n_workers: int,
              progress: bool | None) -> list[Trajectory]:
    """Each member its own solve, `n_workers` at a time. The first chunk solved compiles the program;
    the others wait for it (`first`), so it is compiled once, not once per thread."""
    solve = single_chunk_solver(field, setup, record.solver.max_steps)
    first, compiled = threading.Lock(), threading.Event()
    stop = threading.Event()

    def chunk_solver(y, t0, t1, ts):
        if stop.is_set():
            raise KeyboardInterrupt
        if not compiled.is_set():
            with first:
                if not compiled.is_set():
                    out = solve(y, t0, t1, ts)
                    compiled.set()
                    return out
        return solve(y, t0, t1, ts)

    def run(b: int) -> Trajectory:
        (traj,) = integrate(record, setup, field, chunk_solver, y0[b:b + 1], progress=False,
                            member_stats=lambda _: {"ensemble_member": b})
        return traj

    bar = progress_bar(progress, len(y0), 0, desc="gflow ensemble")
    out: list[Trajectory | None] = [None] * len(y0)
    with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="gflow-member") as pool:
        futures = {pool.submit(run, b): b for b in range(len(y0))}
        try:
            for future in as_completed(futures):
                out[futures[future]] = future.result()
                if bar is not None:
                    bar.update(1)
        except KeyboardInterrupt:  # members stop at their next chunk and keep what they computed
            stop.set()
            for future, b in futures.items():
                out[b] = future.result()
        finally:
            if bar is not None:
                bar.close()
    return out


def _in_processes(record, field: GradientField, y0: np.ndarray, n_workers: int,
                  progress: bool | None) -> list[Trajectory]:
    """Members on the kept pool of pinned worker processes (`_workers.py`). On Ctrl-C the members
    not yet started are cancelled and come back with their initial point only; the others come back
    as far as they got (each worker stops at its next chunk, as `simulate` does)."""
    from ._trajectory import RunStatus
    from ._workers import shutdown_pool, solve_members

    futures = solve_members(record, y0, n_workers)
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
        loss0, gnorm0 = (np.asarray(a) for a in _values_and_norms(field, jnp.asarray(y0)))
        for b in range(len(y0)):
            if out[b] is None:
                out[b] = Trajectory(times=record.save_times[:1].copy(),
                                    params=record.layout.unflatten_many(y0[b:b + 1]),
                                    loss=loss0[b:b + 1], grad_norm=gnorm0[b:b + 1], record=record,
                                    stats={"ensemble_member": b}, status=RunStatus.INTERRUPTED,
                                    message="interrupted by the user before this member started.")
    finally:
        if bar is not None:
            bar.close()
    return out


def _from_arrays(record, r: dict) -> Trajectory:
    return Trajectory(times=r["times"], params=record.layout.unflatten_many(r["ys"]),
                      loss=r["loss"], grad_norm=r["grad_norm"], record=record, stats=r["stats"],
                      status=r["status"], message=r["message"])

