import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import gflow


@pytest.mark.parametrize("batching, workers", [("loop", 1), ("threads", 2), ("processes", 2)])
def test_members_are_the_separate_solves(small_setting, batching, workers):
    """On CPUs members are independent solves (in turn, on threads, or on pinned worker processes):
    each is `simulate`'s own run, to the last bit (same solver, same compiled program)."""
    spec, config, _ = small_setting
    ps = [gflow.init_params(jax.random.key(s), config, spec, scale=0.3) for s in range(3)]
    many = gflow.simulate_many(gflow.stack_params(ps), spec, (0, 30.0), config=config, loss="counts", n_save=13,
                               progress=False, batching=batching, workers=workers)
    assert len(many) == 3 and all(t.record.solver.name == gflow.solvers.SWITCHING_SOLVER for t in many)
    for b, (p, traj) in enumerate(zip(ps, many, strict=True)):
        one = gflow.simulate(p, spec, (0, 30.0), config=config, loss="counts", n_save=13, progress=False)
        assert traj.ok and traj.stats["ensemble_member"] == b and traj.settings["devices"] == workers
        np.testing.assert_array_equal(traj.flat_params(), one.flat_params())
        assert traj.stats["num_accepted_steps"] == one.stats["num_accepted_steps"]


@pytest.mark.slow  # the fast suite checks the vmapped path sharded over four host devices
def test_vmapped_members_equal_separate_solves(small_setting):
    spec, config, _ = small_setting
    ps = [gflow.init_params(jax.random.key(s), config, spec, scale=0.3) for s in range(3)]
    many = gflow.simulate_many(gflow.stack_params(ps), spec, (0, 30.0), config=config, loss="counts", n_save=13,
                               progress=False, batching="vmap")
    assert len(many) == 3
    for p, traj in zip(ps, many, strict=True):
        one = gflow.simulate(p, spec, (0, 30.0), config=config, loss="counts", n_save=13, progress=False,
                             solver="Kvaerno4")  # the vmapped default
        assert traj.ok and np.array_equal(traj.times, one.times)
        np.testing.assert_allclose(traj.loss, one.loss, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(traj.params.W_E), np.asarray(one.params.W_E), rtol=1e-9, atol=1e-12)
        assert traj.stats["num_accepted_steps"] == one.stats["num_accepted_steps"]


def test_simulate_many_rejects_unbatched_input(small_setting):
    spec, config, p0 = small_setting
    with pytest.raises(ValueError, match="leading batch"):
        gflow.simulate_many(jax.tree.map(lambda a: a[0, 0], p0), spec, (0, 1.0), config=config)
    with pytest.raises(ValueError, match="`devices`"):
        gflow.simulate_many(gflow.stack_params([p0]), spec, (0, 1.0), config=config, devices=99)
    with pytest.raises(ValueError, match="`batching`"):
        gflow.simulate_many(gflow.stack_params([p0]), spec, (0, 1.0), config=config, batching="pmap")
    with pytest.raises(ValueError, match="`workers`"):
        gflow.simulate_many(gflow.stack_params([p0]), spec, (0, 1.0), config=config, workers=0)


SHARDED = textwrap.dedent("""
    import jax, numpy as np, gflow
    assert len(jax.devices()) == 4, jax.devices()
    spec = gflow.MarkovSpec.sticky((0.6, 0.3, 0.1), 0.4, T=4)
    config = gflow.TransformerConfig(d_model=3)
    ps = [gflow.init_params(jax.random.key(s), config, spec, scale=0.3) for s in range(5)]  # padded to 8
    many = gflow.simulate_many(gflow.stack_params(ps), spec, (0, 30.0), config=config, loss="counts", n_save=13,
                               progress=False, batching="vmap")
    one = gflow.simulate(ps[4], spec, (0, 30.0), config=config, loss="counts", n_save=13, progress=False,
                         solver="Kvaerno4")
    assert all(t.ok for t in many) and many[4].settings["devices"] == 4
    np.testing.assert_allclose(many[4].loss, one.loss, rtol=1e-10)
    print("sharded ok")
""")


def test_sharded_over_four_host_devices():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "sharded ok" in out.stdout, out.stderr[-3000:]


MULTI_PROCESS = textwrap.dedent("""
    import sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
    import numpy as np, gflow
    assert jax.process_count() == 2 and len(jax.devices()) == 4 and len(jax.local_devices()) == 2
    spec = gflow.MarkovSpec.sticky((0.6, 0.3, 0.1), 0.4, T=4)
    config = gflow.TransformerConfig(d_model=3)
    ps = [gflow.init_params(jax.random.key(s), config, spec, scale=0.3) for s in range(5)]  # padded to 8
    many = gflow.simulate_many(gflow.stack_params(ps), spec, (0, 30.0), config=config, loss="counts", n_save=13,
                               progress=False)
    assert len(many) == 5 and all(t.ok for t in many) and many[0].settings["devices"] == 4
    for s in (0, 4):  # members whose shards live on the first and on the second process
        one = gflow.simulate(ps[s], spec, (0, 30.0), config=config, loss="counts", n_save=13, progress=False,
                             solver="Kvaerno4")
        np.testing.assert_allclose(many[s].loss, one.loss, rtol=1e-10)
        np.testing.assert_allclose(np.asarray(many[s].params.W_E), np.asarray(one.params.W_E), rtol=1e-8, atol=1e-12)
    print("process", jax.process_index(), "ok")
""")


@pytest.mark.slow
def test_sharded_over_two_processes():
    """A multi-process job (jax.distributed, two CPU processes with two devices each, gloo collectives)."""
    with socket.socket() as s:  # a free port for the coordinator
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-c", MULTI_PROCESS, f"127.0.0.1:{port}", str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for i, (p, (out, err)) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 0 and f"process {i} ok" in out, err[-3000:]
