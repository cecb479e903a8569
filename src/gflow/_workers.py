"""Ensemble members solved by a pool of worker processes, one per CPU core (`simulate_many`'s
`batching="processes"`; the default on CPUs is a plain loop, because workers need a main guard).

Why processes and not threads: measured on 2 cores (docs/performance.md), one XLA solve of a small
model already keeps both cores busy (about 1.9 cores of CPU time per core-second of wall), and it
runs 1.27 times *faster* when its process is confined to one core: the second core mostly waits and
synchronises. Two solves in two threads then fight over the same cores. A worker process confined to
its own core (`os.sched_setaffinity`) runs its members at single-core speed, undisturbed.

- The pool is started on first use (spawned: a fresh JAX in each worker) and kept for later calls;
  its workers load the stored solve (`_programs.py`) and its compilation (`_warm.py`) when the
  parent has made them, so a warm call pays neither tracing nor compilation.
- Each member's run is `integrate` on one state, exactly as `simulate` runs it (same solver, same
  compiled program), so the results are those of a loop of `simulate` calls, to the last bit.
- Members are handed out one at a time, so a stiff member never holds back an easy one.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np

_POOL: dict[str, object] = {"pool": None, "size": 0}


def _pin(counter, lock) -> None:
    """Worker initialiser: confine this process to one core (its turn in `counter`)."""
    with lock:
        index = counter.value
        counter.value += 1
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if cores:
        os.sched_setaffinity(0, {cores[index % len(cores)]})


def _solve_member(record, y0: np.ndarray, member: int) -> dict:
    from ._flow import run_record

    traj = run_record(record, record.layout.unflatten(y0), progress=False)
    return {"times": traj.times, "ys": traj.flat_params(), "loss": traj.loss, "grad_norm": traj.grad_norm,
            "stats": {**traj.stats, "ensemble_member": member}, "status": str(traj.status), "message": traj.message}


def worker_pool(size: int) -> ProcessPoolExecutor:
    """The kept pool of `size` pinned worker processes (a new one if the size changed)."""
    if _POOL["pool"] is not None and _POOL["size"] == size:
        return _POOL["pool"]
    shutdown_pool()
    context = multiprocessing.get_context("spawn")
    counter, lock = context.Value("i", 0), context.Lock()
    pool = ProcessPoolExecutor(max_workers=size, mp_context=context, initializer=_pin, initargs=(counter, lock))
    _POOL.update(pool=pool, size=size)
    return pool


def shutdown_pool() -> None:
    """Stop the kept worker processes (also done at exit)."""
    pool = _POOL["pool"]
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)
    _POOL.update(pool=None, size=0)


atexit.register(shutdown_pool)


def solve_members(record, y0: np.ndarray, size: int):
    """Futures of every member's arrays, solved by the pool (in member order)."""
    pool = worker_pool(size)
    return [pool.submit(_solve_member, record, np.asarray(y0[b]), b) for b in range(len(y0))]
