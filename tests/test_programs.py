"""Stored programs (`gflow.common._programs`): a solve exported once and loaded by later processes."""

import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gflow
from gflow.common import _programs
from gflow.solvers import GradientFlowBDF


class Scaled(eqx.Module):
    """A static part: a method name and a factor decide the program."""

    weights: jax.Array
    method: str = eqx.field(static=True)
    factor: float = 2.0


def apply(static, dynamic, x):
    m = eqx.combine(dynamic, static)
    out = m.weights * x * m.factor
    return jnp.tanh(out) if m.method == "tanh" else out


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """An empty program folder, and no program kept from earlier calls in this process."""
    monkeypatch.setattr(_programs, "program_folder", lambda: str(tmp_path))
    monkeypatch.setattr(_programs, "_loaded", {})
    monkeypatch.setattr(_programs, "_unexportable", set())
    return tmp_path


def _split(module):
    return eqx.partition(module, eqx.is_array)


def test_a_stored_program_computes_what_the_function_does_and_is_read_back_from_disk(folder, monkeypatch):
    dynamic, static = _split(Scaled(jnp.arange(3.0), "tanh", 0.5))
    x = jnp.linspace(-1.0, 1.0, 3)
    program = _programs.stored_program("apply", apply, static, (dynamic, x))
    assert program is not None
    np.testing.assert_array_equal(program(dynamic, x), apply(static, dynamic, x))
    assert len(os.listdir(folder)) == 1

    # A new process: nothing kept in memory, and exporting is not allowed: it must read the file.
    monkeypatch.setattr(_programs, "_loaded", {})
    monkeypatch.setattr(_programs, "_export", lambda *a: pytest.fail("the stored program was traced again"))
    again = _programs.stored_program("apply", apply, static, (dynamic, x))
    other = jnp.asarray([3.0, -2.0, 0.25])  # new values, same shapes: the same program
    np.testing.assert_array_equal(again(dynamic, other), apply(static, dynamic, other))


def test_whatever_decides_the_program_changes_its_key(folder):
    x = jnp.ones(3)
    for module, inp in [(Scaled(jnp.ones(3), "tanh", 0.5), x), (Scaled(jnp.ones(3), "linear", 0.5), x),
                        (Scaled(jnp.ones(3), "tanh", 0.25), x), (Scaled(jnp.ones(4), "tanh", 0.5), jnp.ones(4))]:
        dynamic, static = _split(module)
        program = _programs.stored_program("apply", apply, static, (dynamic, inp))
        np.testing.assert_array_equal(program(dynamic, inp), apply(static, dynamic, inp))
    assert len(os.listdir(folder)) == 4  # method, factor and shape each made a program of their own


def test_a_corrupt_file_is_exported_again(folder, monkeypatch):
    dynamic, static = _split(Scaled(jnp.ones(2), "tanh"))
    x = jnp.ones(2)
    _programs.stored_program("apply", apply, static, (dynamic, x))
    (path,) = folder.iterdir()
    path.write_bytes(b"not a program")
    monkeypatch.setattr(_programs, "_loaded", {})
    program = _programs.stored_program("apply", apply, static, (dynamic, x))
    np.testing.assert_array_equal(program(dynamic, x), apply(static, dynamic, x))
    assert path.read_bytes() != b"not a program"


def test_programs_that_cannot_be_described_alike_in_every_process_are_not_stored(folder):
    x = jnp.ones(2)
    for static in [(lambda y: y,), (np.tanh,), (jnp.ones(2),)]:  # a lambda; code outside the key; an array
        assert _programs.describe(static) is None
    assert _programs.describe((jnp.tanh, "tanh", 0.5)) is not None  # jax's code is in the key by its version
    assert _programs.stored_program("apply", lambda s, y: s[0](y), (lambda y: y,), (x,)) is None
    assert not os.listdir(folder)


def test_without_a_cache_folder_nothing_is_stored(monkeypatch):
    monkeypatch.setattr(_programs, "program_folder", lambda: None)
    dynamic, static = _split(Scaled(jnp.ones(2), "tanh"))
    assert _programs.stored_program("apply", apply, static, (dynamic, jnp.ones(2))) is None


def test_a_flow_from_a_stored_solve_equals_the_traced_one(small_setting, folder):
    """By name the solve is stored; an instance is traced as before. Same steps, same numbers."""
    spec, config, params0 = small_setting
    kw = dict(config=config, loss="enumerate", n_save=9, progress=False)
    stored = gflow.simulate(params0, spec, (0.0, 50.0), solver="GradientFlowBDF", **kw)
    traced = gflow.simulate(params0, spec, (0.0, 50.0), solver=GradientFlowBDF(rtol=1e-6, atol=1e-9), **kw)
    assert len([name for name in os.listdir(folder) if name.startswith("chunk-")]) == 1
    np.testing.assert_array_equal(stored.flat_params(), traced.flat_params())
    assert stored.stats["num_accepted_steps"] == traced.stats["num_accepted_steps"]


def test_a_program_that_cannot_be_exported_falls_back_once(folder, monkeypatch):
    tries = []
    monkeypatch.setattr(_programs, "_export", lambda *a: tries.append(1))  # always fails (returns None)
    dynamic, static = _split(Scaled(jnp.ones(2), "tanh"))
    for _ in range(3):
        assert _programs.stored_program("apply", apply, static, (dynamic, jnp.ones(2))) is None
    assert len(tries) == 1 and not os.listdir(folder)


def test_an_analysis_program_is_stored_and_a_new_process_reads_it_without_tracing(small_setting, folder, monkeypatch):
    """`stored_filter_jit` (the dense Hessian): the same numbers as `filter_jit`, one file, and a new
    wrapper with nothing in memory and exporting forbidden reads it back; new values, same program.
    A function that is not gflow's (its code is not in the key) is traced as `filter_jit` does."""
    from gflow.analysis._hessian import dense_hessian

    spec, config, params0 = small_setting
    traj = gflow.simulate(params0, spec, (0.0, 5.0), config=config, loss="enumerate", n_save=3, progress=False)
    fn, layout, ys = traj.loss_function(), traj.layout, traj.flat_params()
    monkeypatch.setattr(_programs, "_loaded", {})
    before = set(os.listdir(folder))
    stored = _programs.stored_filter_jit(dense_hessian.__wrapped__)
    traced = eqx.filter_jit(dense_hessian.__wrapped__)
    np.testing.assert_array_equal(stored(fn, layout, ys[1]), traced(fn, layout, ys[1]))
    assert len(set(os.listdir(folder)) - before) == 1
    monkeypatch.setattr(_programs, "_loaded", {})
    monkeypatch.setattr(_programs, "_export", lambda *a: pytest.fail("the stored program was traced again"))
    again = _programs.stored_filter_jit(dense_hessian.__wrapped__)
    np.testing.assert_array_equal(again(fn, layout, ys[2]), traced(fn, layout, ys[2]))
    assert _programs.stored_filter_jit(lambda x: 2 * x)(jnp.ones(2)).tolist() == [2.0, 2.0]  # not gflow's: traced


def test_released_programs_free_their_memory_maps_and_are_read_back_from_disk(folder, monkeypatch):
    """Each loaded XLA program holds memory maps until it is dropped (a process at Linux's limit
    segfaults); `release_compiled_programs` drops them, and a stored program then computes the same
    numbers from its file, without being exported again."""
    if _programs.memory_map_count() is None:
        pytest.skip("this system's /proc does not count memory maps")
    dynamic, static = _split(Scaled(jnp.arange(3.0), "tanh", 0.5))
    x = jnp.linspace(-1.0, 1.0, 3)
    expected = apply(static, dynamic, x)
    program = _programs.stored_program("apply", apply, static, (dynamic, x))
    held = [jax.jit(lambda v, c=float(c): jnp.sin(v) * c) for c in range(60)]  # 60 programs, kept
    for f in held:
        f(x).block_until_ready()
    before = _programs.memory_map_count()[0]
    gflow.release_compiled_programs()
    assert _programs.memory_map_count()[0] < before - 200  # about 10 maps a program
    monkeypatch.setattr(_programs, "_export", lambda *a: pytest.fail("the stored program was traced again"))
    again = _programs.stored_program("apply", apply, static, (dynamic, x))
    np.testing.assert_array_equal(again(dynamic, x), expected)
    np.testing.assert_array_equal(program(dynamic, x), expected)  # a program the caller kept still runs


def test_a_process_near_the_memory_map_limit_releases_its_programs_and_warns_once_if_that_is_not_enough(monkeypatch):
    import warnings

    released = []
    monkeypatch.setattr(_programs, "MAP_CHECK_EVERY", 1)
    monkeypatch.setattr(_programs, "_warned_maps", False)
    monkeypatch.setattr(_programs, "release_compiled_programs", lambda: released.append(True))

    def counts(*pairs):
        it = iter(pairs)
        monkeypatch.setattr(_programs, "memory_map_count", lambda: next(it))

    counts((50, 100))  # under MAP_SHARE_LIMIT: nothing to do
    _programs.note_new_program()
    assert released == []
    counts((70, 100), (20, 100))  # over it: released, and enough
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _programs.note_new_program()
    assert released == [True]
    counts((70, 100), (65, 100), (70, 100), (65, 100))  # the caller holds the maps: warned, once
    with pytest.warns(RuntimeWarning, match="vm.max_map_count"):
        _programs.note_new_program()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _programs.note_new_program()
    assert released == [True] * 3


def test_the_folder_is_pruned_of_its_least_recently_used_programs_and_a_read_renews_one(folder, monkeypatch):
    dynamic, static = _split(Scaled(jnp.arange(3.0), "tanh", 0.5))
    x = jnp.linspace(-1.0, 1.0, 3)
    _programs.stored_program("apply", apply, static, (dynamic, x))
    (used,) = [f for f in os.listdir(folder) if f.endswith(_programs.SUFFIX)]
    for i, name in enumerate(["old", "older", "oldest"]):  # three unused programs of 1,000 bytes
        path = folder / f"{name}{_programs.SUFFIX}"
        path.write_bytes(b"\0" * 1000)
        os.utime(path, (1e9 - i * 1e6, 1e9 - i * 1e6))
    os.utime(folder / used, (1e8, 1e8))  # the oldest of all, until it is read
    (folder / "notes.txt").write_text("not a program: left alone")
    monkeypatch.setattr(_programs, "_loaded", {})
    _programs.stored_program("apply", apply, static, (dynamic, x))  # a new process reads it back
    assert os.path.getmtime(folder / used) > 1e9
    size = os.path.getsize(folder / used)
    assert _programs.prune_programs(str(folder), max_bytes=size + 1500) == 2
    assert sorted(os.listdir(folder)) == sorted([used, f"old{_programs.SUFFIX}", "notes.txt"])
    assert _programs.prune_programs(str(folder), max_bytes=10**9) == 0


def test_a_cache_folder_is_pruned_by_last_use_the_later_of_access_and_modification(tmp_path):
    from gflow.common._prune import prune_least_recent

    def entry(name, size, accessed, modified):
        path = tmp_path / name
        path.write_bytes(b"\0" * size)
        os.utime(path, (accessed, modified))

    entry("read-lately-cache", 1000, accessed=3e9, modified=1e9)  # written long ago, read since
    entry("unused-cache", 1000, accessed=1e9, modified=1e9)
    entry("written-lately-cache", 1000, accessed=2e9, modified=2.5e9)
    entry("unused-atime", 5000, accessed=1e8, modified=1e8)  # not an entry: left alone
    (tmp_path / "programs-cache").mkdir()  # nor is a folder
    assert prune_least_recent(str(tmp_path), "-cache", 2500) == 1
    assert sorted(os.listdir(tmp_path)) == ["programs-cache", "read-lately-cache", "unused-atime",
                                            "written-lately-cache"]
    assert prune_least_recent(str(tmp_path), "-cache", 0) == 2
    assert prune_least_recent(str(tmp_path / "missing"), "-cache", 0) == 0


def test_a_process_that_turns_on_the_cache_keeps_gflows_folder_under_its_bound(tmp_path):
    import subprocess
    import sys

    from gflow.common import _warm

    old, new = tmp_path / "jit_old-cache", tmp_path / "jit_new-cache"
    with open(old, "wb") as f:  # a sparse file: its size counts, it takes no disk
        f.truncate(_warm.JAX_CACHE_MAX_BYTES)
    os.utime(old, (1e9, 1e9))
    new.write_bytes(b"\0" * 1000)
    env = dict(os.environ, GFLOW_COMPILATION_CACHE=str(tmp_path))
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    subprocess.run([sys.executable, "-c", "import gflow"], env=env, check=True, timeout=120)
    assert sorted(os.listdir(tmp_path)) == ["jit_new-cache"]
