"""A kept pool of spawned worker processes, each confined to one CPU core.

Why processes and not threads: measured on 2 cores (docs/performance.md), one XLA solve of a small
model already keeps both cores busy (about 1.9 cores of CPU time per core-second of wall), and it
runs 1.27 times *faster* when its process is confined to one core: the second core mostly waits and
synchronises. Two solves in two threads then fight over the same cores. A worker process confined to
its own core (`os.sched_setaffinity`) runs its jobs at single-core speed, undisturbed.

The pool is started on first use (spawned: a fresh JAX in each worker; JAX and fork deadlock) and
kept for later calls, so its workers keep what they compiled. It knows nothing of what the jobs are
(`flow/_workers.py` hands it ensemble members).
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

_POOL: dict[str, object] = {"pool": None, "size": 0}


def _pin(counter, lock) -> None:
    """Worker initialiser: confine this process to one core (its turn in `counter`), and keep JAX
    from taking a GPU's whole memory (the workers share it), before JAX starts its backend."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    with lock:
        index = counter.value
        counter.value += 1
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if cores:
        os.sched_setaffinity(0, {cores[index % len(cores)]})


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
