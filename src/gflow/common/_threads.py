"""How many CPU threads gflow's solves use: one for XLA's operations, and one for LAPACK's small
eigendecompositions (docs/performance.md, "One thread").

A gradient-flow step is hundreds of small XLA operations (a Hessian-vector product of problem C, 3,072
parameters, is about 80 µs), and XLA's CPU client hands them to a pool of intra-op threads sized by
the cores the process may use. At this size handing work between threads costs more than it saves.
Measured on 2 cores (2026-12-06, the same run in one process with each setting):
- **XLA's pool.** With a one-thread pool, problem C's Krylov BDF took 4.9 s against 6.8 s, and the
  largest problem, D (36,864 parameters), 142.6 s against 152.3 s.
- **OpenBLAS.** With one thread, problem E's dense BDF (224 parameters, an `eigh` per Hessian renewal)
  took 1.0 s against 1.2 s, and 0.81-0.83 s with both limits.

An `eigh` alone is level at 256 rows (4.9 ms with one thread or two) and 10-15% faster with two above
it (`ONE_BLAS_THREAD_UP_TO`).

**How.** XLA sizes its pool when JAX creates the CPU client, from the process's CPU affinity (there is
no option for it). `one_thread_cpu_client` wraps JAX's CPU backend factory, so that whenever JAX
creates the client, the creating thread is held to one core. The affinity of that thread, and of the
threads started meanwhile, is then restored. So nothing stays pinned: only the pool's size changes.
This takes effect only if JAX has not created its CPU client before gflow is imported, only on
Linux, and not when the process asked for several CPU devices (`several_cpu_devices_asked`).
`GFLOW_CPU_THREADS=all` keeps JAX's and OpenBLAS's own thread counts.
"""

from __future__ import annotations

import contextlib
import os
import re

THREADS_ENV = "GFLOW_CPU_THREADS"
"""`all`: JAX's CPU client and OpenBLAS keep their own thread counts; anything else (or unset): one."""

ONE_BLAS_THREAD_UP_TO = 256
"""Flows of at most this many parameters run with OpenBLAS held to one thread: there a dense `eigh`
is no faster with two (4.9 ms at 256 rows on 2 cores), and inside a run the second thread competes
with XLA's. Above it, a second thread makes an `eigh` 10-15% faster (320-448 rows)."""

_TASKS = "/proc/self/task"


def one_thread_wanted() -> bool:
    """Whether gflow holds XLA and small LAPACK calls to one thread (`GFLOW_CPU_THREADS` is not `all`)."""
    return os.environ.get(THREADS_ENV, "").strip().lower() != "all"


def _threads() -> set[int]:
    try:
        return {int(tid) for tid in os.listdir(_TASKS)}
    except OSError:
        return set()


@contextlib.contextmanager
def _on_one_core():
    """Hold the calling thread to one of its cores for the block; afterwards give it, and every thread
    started during the block, the calling thread's cores back."""
    cores = os.sched_getaffinity(0)
    if len(cores) < 2:
        yield
        return
    before = _threads()
    os.sched_setaffinity(0, {min(cores)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, cores)
        for tid in _threads() - before:
            with contextlib.suppress(OSError):  # a thread that has ended meanwhile
                os.sched_setaffinity(tid, cores)


def several_cpu_devices_asked() -> bool:
    """Whether the process asked JAX for several CPU devices (`jax_num_cpu_devices` or XLA's
    `--xla_force_host_platform_device_count`): their shards are meant to run side by side, so
    the client keeps JAX's own threads."""
    import jax

    flags = re.findall(r"--xla_force_host_platform_device_count=(\d+)", os.environ.get("XLA_FLAGS", ""))
    return int(getattr(jax.config, "jax_num_cpu_devices", -1) or -1) > 1 or any(int(f) > 1 for f in flags)


def one_thread_cpu_client() -> bool:
    """Have JAX create its CPU client with a one-thread intra-op pool. Returns whether JAX's factory
    is wrapped: `False` with `GFLOW_CPU_THREADS=all`, off Linux, or when JAX's backends already exist
    (then the pool keeps the size it was given). A wrapped factory still keeps JAX's pool if, when
    the client is created, several CPU devices were asked for."""
    if not one_thread_wanted() or not hasattr(os, "sched_setaffinity"):
        return False
    try:  # JAX's private registry: if a later JAX lays it out otherwise, gflow leaves the client alone
        from jax._src import xla_bridge

        registration = getattr(xla_bridge, "_backend_factories", {}).get("cpu")
        initialized = getattr(xla_bridge, "backends_are_initialized", lambda: True)()
    except ImportError:
        return False
    if registration is None or initialized or not callable(getattr(registration, "factory", None)):
        return False
    factory = registration.factory
    if getattr(factory, "gflow_one_thread", False):
        return True

    def create_on_one_core(*args, **kwargs):
        if several_cpu_devices_asked():
            return factory(*args, **kwargs)
        with _on_one_core():
            return factory(*args, **kwargs)

    create_on_one_core.gflow_one_thread = True
    try:
        registration.factory = create_on_one_core
    except (AttributeError, TypeError):  # a frozen registration
        return False
    return True


def blas_threads_for(n_params: int):
    """A context holding OpenBLAS (and any BLAS `threadpoolctl` sees) to one thread while a flow of
    `n_params` parameters is solved, when `ONE_BLAS_THREAD_UP_TO` says so; otherwise a no-op."""
    if not one_thread_wanted() or n_params > ONE_BLAS_THREAD_UP_TO:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits  # a dependency of gflow's (pyproject.toml)

    return threadpool_limits(limits=1, user_api="blas")
