"""Test set-up: float64 and strict dtype promotion everywhere, PRNG keys, and shared small problems."""

import jax
import pytest
from jaxtyping import TypeCheckError

import gflow
from gflow.common import memory_map_count

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")

# An argument of the wrong *type* raises ValueError in users' runs; under the test suite's
# jaxtyping hook the annotation check may catch it first (TypeCheckError). Either names the argument.
BAD_TYPE = (ValueError, TypeCheckError)

DEMO_PI = (0.75, 0.19, 0.05, 0.01)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """A test module ends by dropping the compiled programs its worker holds once they pass 16,000
    memory maps (~1,600 programs; under this rule a worker peaks at 19.7k maps and 2.7 GB): a
    worker that keeps every program of ~190 tests holds ~5 GB and ~64,000 maps, at the edge of
    Linux's limit (65,530), where loading the next program segfaults (a CI run died so,
    2026-12-03). gflow guards a process by itself at 60% of the limit (`MAP_SHARE_LIMIT`); this
    keeps the workers small. Not after every module: reloading the programs then cost the suite
    14% (171 against 150 s)."""
    yield
    counted = memory_map_count()
    if counted is not None and counted[0] > 16_000:
        gflow.release_compiled_programs()


@pytest.fixture
def key():
    return jax.random.key(20261122)


@pytest.fixture
def demo_spec():
    return gflow.MarkovSpec.sticky(DEMO_PI, 0.5, T=6)


@pytest.fixture
def small_setting():
    """A 3-token chain and a tiny attention-only model: fast flows for the solver tests."""
    spec = gflow.MarkovSpec.sticky((0.6, 0.3, 0.1), 0.4, T=4)
    config = gflow.TransformerConfig(d_model=3)
    params0 = gflow.init_params(jax.random.key(1), config, spec, scale=0.3)
    return spec, config, params0


@pytest.fixture
def interrupt_chunk(monkeypatch):
    """`interrupt_chunk(n)`: Ctrl-C during the n-th chunk a flow solves from now on (stored or traced
    solve alike); `interrupt_chunk(None)` lets chunks run again."""
    from gflow.flow import SingleState

    real, calls, target = SingleState.solve, {"n": 0}, {"n": None}

    def interrupted(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == target["n"]:
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(SingleState, "solve", interrupted)

    def at(n):
        calls["n"], target["n"] = 0, n

    return at
