"""gflow's thread counts (common/_threads.py): XLA's CPU client gets a one-thread pool and no thread is
left pinned; OpenBLAS is held to one thread only while a small flow is solved."""

import json
import os
import subprocess
import sys

import pytest

from gflow.common import _threads

LINUX_WITH_CORES = (hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2
                    and os.path.isdir("/proc/self/task"))

PROBE = """
import json, os
import gflow, jax, jax.numpy as jnp
jax.jit(lambda x: x + 1)(jnp.ones(2)).block_until_ready()
tasks = os.listdir("/proc/self/task")
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in tasks]
print(json.dumps({"pool": names.count("tf_XLAEigen"),
                  "pinned": sum(os.sched_getaffinity(int(t)) != os.sched_getaffinity(0) for t in tasks)}))
"""


def probe(threads: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != _threads.THREADS_ENV}
    if threads is not None:
        env[_threads.THREADS_ENV] = threads
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not LINUX_WITH_CORES, reason="needs Linux's CPU affinity and at least two cores")
def test_the_cpu_client_gets_one_pool_thread_and_no_thread_stays_pinned():
    one, default = probe(None), probe("all")
    assert one == {"pool": 1, "pinned": 0}
    # the opt-out keeps XLA's own pool: one thread per core the process may use
    assert default["pool"] == len(os.sched_getaffinity(0)) and default["pinned"] == 0


def blas_threads() -> dict[str, int]:
    """Each BLAS library's thread count, by file, as threadpoolctl sees it."""
    from threadpoolctl import threadpool_info

    return {lib["filepath"]: lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


def test_blas_is_held_to_one_thread_for_small_flows_only(monkeypatch):
    pytest.importorskip("threadpoolctl")
    import numpy as np

    np.linalg.eigh(np.eye(2))  # loads the BLAS libraries threadpoolctl reports
    own = blas_threads()
    if not own:
        pytest.skip("no BLAS library that threadpoolctl can see")
    with _threads.blas_threads_for(_threads.ONE_BLAS_THREAD_UP_TO):
        assert set(blas_threads().values()) == {1}
    assert blas_threads() == own
    with _threads.blas_threads_for(_threads.ONE_BLAS_THREAD_UP_TO + 1):
        assert blas_threads() == own
    monkeypatch.setenv(_threads.THREADS_ENV, "all")
    with _threads.blas_threads_for(2):
        assert blas_threads() == own


@pytest.mark.skipif(not LINUX_WITH_CORES, reason="needs Linux's CPU affinity and at least two cores")
def test_several_host_devices_keep_jaxs_own_pool(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    assert probe(None)["pool"] == len(os.sched_getaffinity(0))
