"""Where the runs of a sweep are computed: `concurrent.futures.Executor`s, one per engine.

- `local` (the default): a pool of spawned worker processes, one per core, each confined to its
  core (`common/_pool.py`, as `simulate_many`'s processes);
- `dask`: `dask.distributed`, a `LocalCluster` of spawned single-threaded worker processes, or the
  scheduler at `--address`; a worker that dies has its runs rescheduled by Dask;
- `ray`: `ray.init()` (local) or `ray.init(address=...)`; each run is a remote task;
- `submitit`: Slurm jobs (its local executor where there is no Slurm).

Any other `concurrent.futures.Executor` works from Python (`Client.get_executor()`, loky,
`mpi4py.futures`). The engines are optional extras; asking for one that is not installed is a
`ValueError` naming the extra. Workers never preallocate a GPU's memory (several share one).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import warnings

EXECUTORS = ("local", "dask", "ray", "submitit")
EXTRAS = {"dask": ("distributed", "distributed"), "ray": ("ray", "ray"), "submitit": ("submitit", "slurm")}
"""engine -> (module it needs, gflow extra that installs it)."""
CONNECT_TIMEOUT = 5.0
"""Seconds to reach a scheduler given by `--address` before giving up, naming it."""


def _require(engine: str):
    module, extra = EXTRAS[engine]
    try:
        return __import__(module)
    except ImportError:
        raise ValueError(f"the {engine} executor needs {module!r}, which is not installed: pip install "
                         f"'gflow[{extra}]'.") from None


class _Local(concurrent.futures.Executor):
    def __init__(self, workers: int):
        from ..common import worker_pool

        self.pool = worker_pool(workers)

    def submit(self, fn, /, *args, **kwargs):
        return self.pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait=True, *, cancel_futures=False):  # the kept pool outlives one sweep
        pass


class _Ray(concurrent.futures.Executor):
    def __init__(self, ray, workers: int | None, address: str | None):
        self.ray = ray
        if not ray.is_initialized():
            with warnings.catch_warnings():  # Ray starts its daemons by fork + exec: no JAX state is shared
                warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
                ray.init(address=address, num_cpus=workers if address is None else None, include_dashboard=False,
                         runtime_env={"env_vars": {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}})
        self._remote = {}

    def submit(self, fn, /, *args, **kwargs):
        remote = self._remote.setdefault(fn, self.ray.remote(num_cpus=1)(fn))
        return remote.remote(*args, **kwargs).future()


class _Submitit(concurrent.futures.Executor):
    def __init__(self, submitit, folder: str):
        self.executor = submitit.AutoExecutor(folder=folder)
        self.executor.update_parameters(timeout_min=24 * 60)
        self._waiters = concurrent.futures.ThreadPoolExecutor(max_workers=64)

    def submit(self, fn, /, *args, **kwargs):
        job = self.executor.submit(fn, *args, **kwargs)
        return self._waiters.submit(job.result)

    def shutdown(self, wait=True, *, cancel_futures=False):
        self._waiters.shutdown(wait=wait, cancel_futures=cancel_futures)


@contextlib.contextmanager
def open_executor(name: str, *, workers: int | None = None, address: str | None = None, folder: str = "."):
    """The executor called `name` for the length of the block (a cluster it started is stopped after)."""
    if name not in EXECUTORS:
        raise ValueError(f"`executor` must be one of {EXECUTORS} (or a concurrent.futures.Executor); got {name!r}.")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"`workers` must be an integer >= 1; got {workers!r}.")
    n = workers or os.cpu_count() or 1
    if name == "local":
        if address is not None:
            raise ValueError("`--address` is for the dask and ray executors; the local one runs here.")
        yield _Local(n)
        return
    if name == "dask":
        _require("dask")
        from distributed import Client, LocalCluster

        if address is None:
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                                   env={"XLA_PYTHON_CLIENT_PREALLOCATE": "false"})
            client = Client(cluster)
        else:
            cluster = None
            try:
                client = Client(address, timeout=CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as e:
                raise ValueError(f"cannot reach the Dask scheduler at {address!r} within {CONNECT_TIMEOUT:g} s "
                                 f"({type(e).__name__}); is it running, and is the address right?") from None
        try:
            yield client.get_executor()
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
        return
    if name == "ray":
        ray = _require("ray")
        try:
            yield _Ray(ray, n, address)
        except ConnectionError as e:
            raise ValueError(f"cannot reach the Ray cluster at {address!r}: {e}") from None
        return
    submitit = _require("submitit")
    with _Submitit(submitit, os.path.join(folder, "submitit")) as executor:
        yield executor
