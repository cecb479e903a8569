import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gflow
from conftest import BAD_TYPE
from gflow.model import sequence_logits

small_problems = st.fixed_dictionaries({
    "V": st.integers(2, 3), "T": st.integers(1, 4), "seed": st.integers(0, 2**31 - 1),
    "alpha": st.sampled_from([0.3, 1.0, 5.0]), "positions": st.sampled_from(["last", "all"]),
    "n_heads": st.integers(1, 2), "d_model": st.integers(1, 4), "value": st.booleans(), "residual": st.booleans(),
    "scale": st.sampled_from([0.1, 1.0, 2.0]),
})


def build_problem(d):
    """A random chain (Dirichlet rows) and random weights of a random small config."""
    k1, k2 = jax.random.split(jax.random.key(d["seed"]))
    spec = gflow.MarkovSpec.dirichlet(k1, d["V"], d["alpha"], d["T"], positions=d["positions"])
    cfg = gflow.TransformerConfig(n_heads=d["n_heads"], d_model=d["d_model"], value=d["value"],
                                  residual=d["residual"])
    return spec, cfg, gflow.init_params(k2, cfg, spec, scale=d["scale"])


@settings(max_examples=15, deadline=None)
@given(small_problems)
def test_enumerate_equals_counts(problem):
    spec, cfg, params = build_problem(problem)
    a = gflow.population_loss(params, spec, cfg, "enumerate")
    b = gflow.population_loss(params, spec, cfg, "counts")
    assert abs(float(a) - float(b)) < 1e-10


@settings(max_examples=10, deadline=None)
@given(small_problems)
def test_loss_is_bounded_below_by_entropy_rate(problem):
    spec, cfg, params = build_problem(problem)
    # At stationarity every position's conditional entropy is the entropy rate; no predictor beats it.
    assert float(gflow.population_loss(params, spec, cfg, "counts")) >= spec.entropy_rate() - 1e-12


def test_counts_approaches_meanfield_as_T_grows(key):
    cfg = gflow.TransformerConfig(d_model=4)
    base = gflow.MarkovSpec.sticky([0.5, 0.3, 0.2], 0.3, T=1)
    params = gflow.init_params(key, cfg, base, scale=1.5)
    mf = float(gflow.population_loss(params, base, cfg, "meanfield"))
    gaps = {}
    for T in (8, 16, 64, 128):
        spec = gflow.MarkovSpec.sticky([0.5, 0.3, 0.2], 0.3, T=T)
        gaps[T] = abs(float(gflow.population_loss(params, spec, cfg, "counts")) - mf)
    # Not monotone at small T (the query counts itself among few keys), but the gap closes.
    assert gaps[8] > 0.05 and gaps[16] > 0.01
    assert gaps[64] < 1e-4 and gaps[128] < 1e-4


def test_sampled_is_within_standard_error_of_enumerate(key):
    spec = gflow.MarkovSpec.sticky([0.6, 0.3, 0.1], 0.4, T=5, positions="all")
    cfg = gflow.TransformerConfig(d_model=3, value=True)
    params = gflow.init_params(key, cfg, spec, scale=1.0)
    exact = float(gflow.population_loss(params, spec, cfg, "enumerate"))
    n = 3000
    sk = jax.random.key(11)
    sampled = float(gflow.population_loss(params, spec, cfg, "sampled", n_samples=n, key=sk))
    # Per-sequence losses from an independent forward pass give the standard error.
    seqs = spec.sample(sk, n)
    logp = jax.nn.log_softmax(sequence_logits(params, seqs[:, :-1], cfg), axis=-1)
    per_seq = -jnp.take_along_axis(logp, seqs[:, 1:, None], axis=-1)[..., 0].mean(axis=1)
    assert float(per_seq.mean()) == pytest.approx(sampled, abs=1e-12)
    se = float(per_seq.std()) / np.sqrt(n)
    assert abs(sampled - exact) < 4 * se


@pytest.mark.parametrize("method", ["enumerate", "counts", "meanfield"])
def test_gradient_matches_finite_differences(key, method):
    spec = gflow.MarkovSpec.sticky([0.5, 0.3, 0.2], 0.4, T=3, positions="all")
    cfg = gflow.TransformerConfig(d_model=3, residual=True)
    params = gflow.init_params(key, cfg, spec, scale=0.7)
    fn = gflow.loss_function(spec, cfg, method)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    grad = jax.flatten_util.ravel_pytree(jax.grad(fn)(params))[0]
    h = 1e-6
    for i in np.random.default_rng(0).choice(flat.size, 12, replace=False):
        e = jnp.zeros_like(flat).at[i].set(h)
        fd = (fn(unravel(flat + e)) - fn(unravel(flat - e))) / (2 * h)
        assert float(fd) == pytest.approx(float(grad[i]), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("method", ["enumerate", "counts", "meanfield"])
def test_uniform_logits_give_log_V(demo_spec, key, method):
    cfg = gflow.TransformerConfig()
    params = gflow.init_params(key, cfg, demo_spec, scale=1.0)
    params = params.__class__(**{**params.__dict__, "W_U": jnp.zeros_like(params.W_U)})
    assert float(gflow.population_loss(params, demo_spec, cfg, method)) == pytest.approx(np.log(4), abs=1e-14)


@pytest.mark.parametrize("positions", ["last", "all"])
@pytest.mark.parametrize("method", ["enumerate", "counts", "meanfield"])
def test_known_optimal_and_constant_predictors(demo_spec, method, positions):
    spec = gflow.MarkovSpec.sticky((0.75, 0.19, 0.05, 0.01), 0.5, T=5, positions=positions)
    V = spec.V
    P, pi = np.asarray(spec.P), spec.stationary()
    # The residual stream alone with W_E = I, W_U = log P predicts P(x_t, .): the entropy rate.
    cfg = gflow.TransformerConfig(d_model=V, residual=True, value=True)
    best = gflow.TransformerParams(W_E=jnp.eye(V), W_Q=jnp.zeros((1, V, V)), W_K=jnp.zeros((1, V, V)),
                                   W_V=jnp.zeros((1, V, V)), W_O=jnp.zeros((1, V, V)), W_U=jnp.asarray(np.log(P)))
    assert float(gflow.population_loss(best, spec, cfg, method)) == pytest.approx(spec.entropy_rate(), abs=1e-12)
    # Identical embeddings make every output the same; W_U = log pi then gives the unigram entropy.
    cfg0 = gflow.TransformerConfig(d_model=2)
    const = gflow.TransformerParams(W_E=jnp.tile(jnp.array([1.0, 0.0]), (V, 1)), W_Q=jnp.ones((1, 2, 2)),
                                    W_K=jnp.ones((1, 2, 2)), W_U=jnp.asarray(np.stack([np.log(pi), np.zeros(V)])))
    got = float(gflow.population_loss(const, spec, cfg0, method))
    assert got == pytest.approx(spec.unigram_entropy(), abs=1e-12)


def test_auto_picks_exact_methods_and_says_why_it_falls_back(key):
    cfg = gflow.TransformerConfig(d_model=2)
    spec = gflow.MarkovSpec.sticky([0.5, 0.5], 0.1, T=5)
    assert gflow.loss_function(spec, cfg).method == "counts"
    pos = gflow.TransformerConfig(d_model=2, positional="learned")
    assert gflow.loss_function(spec, pos).method == "enumerate"
    long = gflow.MarkovSpec.sticky([0.5, 0.5], 0.1, T=40)
    with pytest.warns(UserWarning, match="fell back to 'sampled'.*positional"):
        assert gflow.loss_function(long, pos).method == "sampled"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert gflow.loss_function(long, cfg).method == "counts"


CFG2 = gflow.TransformerConfig(d_model=2)
POS2 = gflow.TransformerConfig(d_model=2, positional="learned")
SPEC12 = gflow.MarkovSpec.sticky([0.25] * 4, 0.1, T=12)
BIG = gflow.MarkovSpec.sticky([0.125] * 8, 0.1, T=40)


@pytest.mark.parametrize(("args", "kwargs", "error", "match"), [
    ((SPEC12, CFG2, "enumerate"), {}, ValueError, "V\\*\\*T.*budget.*counts"),
    ((SPEC12, POS2, "counts"), {}, ValueError, "positional='none'"),
    ((SPEC12, POS2, "meanfield"), {}, ValueError, "positional='none'"),
    ((BIG, CFG2, "counts"), {}, ValueError, "counts.*states.*budget"),
    ((SPEC12, CFG2, "exact"), {}, ValueError, "`method`"),
    ((SPEC12, CFG2, "counts"), {"n_samples": 10}, ValueError, "only used by method='sampled'"),
    (("chain", CFG2), {}, BAD_TYPE, "spec"),
])
def test_loss_methods_refuse_what_they_cannot_do(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        gflow.loss_function(*args, **kwargs)


def test_loss_function_is_a_pytree_that_jits_without_recompiling(key):
    cfg = gflow.TransformerConfig(d_model=3)
    traces = []

    @jax.jit
    def value(fn, p):
        traces.append(1)
        return fn(p)

    for lam in (0.1, 0.5, 0.9):
        spec = gflow.MarkovSpec.sticky([0.5, 0.3, 0.2], lam, T=4)
        params = gflow.init_params(key, cfg, spec, scale=0.5)
        fn = gflow.loss_function(spec, cfg, "meanfield")
        assert float(value(fn, params)) == pytest.approx(float(fn(params)), abs=1e-14)
    assert len(traces) == 1
