"""In-context Markov chains and two-layer models: the exact law against an independent
Dirichlet-multinomial, the posterior predictive against a ratio of marginals, samples against the
law, the two-layer forward pass against NumPy, the flow's invariant, and bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import gammaln

import gflow
from conftest import BAD_TYPE
from gflow.model import sequence_logits


def _dirichlet_multinomial(seq, V, alpha):
    """p(x_1..x_T) = (1/V) prod_a Gamma(V a)/Gamma(V a + n_a) prod_b Gamma(a + n_ab)/Gamma(a)."""
    n = np.zeros((V, V))
    for x, y in zip(seq[:-1], seq[1:], strict=True):
        n[x, y] += 1
    log_p = -math.log(V)
    for a in range(V):
        log_p += gammaln(V * alpha) - gammaln(V * alpha + n[a].sum())
        log_p += sum(gammaln(alpha + n[a, b]) - gammaln(alpha) for b in range(V))
    return math.exp(log_p)


@pytest.mark.parametrize(("V", "alpha", "T"), [(2, 0.5, 5), (3, 1.0, 4), (4, 0.2, 3)])
def test_the_law_is_the_dirichlet_multinomial_and_the_targets_its_predictive(V, alpha, T):
    spec = gflow.InContextMarkovSpec(V, alpha, T=T, positions="all")
    tokens, prob, targets = spec.sequence_law(10**6)
    assert len(tokens) == V**T and prob.sum() == pytest.approx(1.0, abs=1e-13)
    np.testing.assert_allclose(prob, [_dirichlet_multinomial(s, V, alpha) for s in tokens], rtol=1e-11)
    # the predictive is a ratio of marginals: p(x_1..x_t, b) / p(x_1..x_t), each a Dirichlet-multinomial
    for i in range(0, len(tokens), max(1, len(tokens) // 20)):
        for t in range(T):
            prefix = list(tokens[i, : t + 1])
            ratio = [_dirichlet_multinomial(prefix + [b], V, alpha) / _dirichlet_multinomial(prefix, V, alpha)
                     for b in range(V)]
            np.testing.assert_allclose(targets[i, t], ratio, rtol=1e-11)


def test_samples_follow_the_exact_law():
    spec = gflow.InContextMarkovSpec(2, 0.5, T=3)
    tokens, prob, _ = spec.sequence_law(10**6)
    n = 200_000
    sample = np.asarray(spec.sample(jax.random.key(0), n))[:, :3]
    index = {tuple(t): k for k, t in enumerate(tokens.tolist())}
    freq = np.bincount([index[tuple(s)] for s in sample.tolist()], minlength=len(tokens)) / n
    sigma = np.sqrt(prob * (1 - prob) / n)
    assert np.all(np.abs(freq - prob) < 5 * sigma + 1e-12), (freq, prob)


def test_reference_levels_are_ordered_and_named():
    spec = gflow.InContextMarkovSpec(3, 1.0, T=5, positions="all")
    levels = spec.reference_levels()
    assert list(levels) == ["in-context bigram (Bayes)", "in-context unigram", "uniform"]
    bayes, unigram, uniform = levels.values()
    assert bayes < unigram < uniform == pytest.approx(math.log(3))
    # the Bayes level is the loss of the Bayes predictor itself: the enumerated loss of its targets
    tokens, prob, targets = spec.sequence_law(10**6)
    rho = spec.position_weights()
    assert bayes == pytest.approx(float(prob @ (-(targets * np.log(targets)).sum(-1) @ rho)), rel=1e-12)
    back = gflow.data.source_from_json(spec.to_json())
    assert back == spec and back.reference_levels() == levels


def _numpy_two_layer(p, tokens, cfg):
    p = {k: (None if v is None else np.asarray(v)) for k, v in vars(p).items()}
    out = []
    for seq in np.asarray(tokens):
        T = len(seq)
        h = p["W_E"][seq] + (p["W_pos"][:T] if cfg.positional == "learned" else 0.0)
        z = h.copy()
        for W_Q, W_K, W_V, W_O in ((p["W_Q"], p["W_K"], p["W_V"], p["W_O"]),
                                   (p["W_Q2"], p["W_K2"], p["W_V2"], p["W_O2"])):
            x = z
            add = np.zeros_like(z)
            for k in range(cfg.n_heads):
                s = cfg.score_scale * (x @ W_Q[k]) @ (x @ W_K[k]).T
                s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
                a = np.exp(s - s.max(axis=1, keepdims=True))
                a /= a.sum(axis=1, keepdims=True)
                add += a @ (x @ W_V[k] @ W_O[k] if cfg.value else x)
            z = x + add
        out.append(z @ p["W_U"])
    return np.stack(out)


@pytest.mark.parametrize("fields", [dict(value=True, positional="learned", n_heads=2), dict(value=False)])
def test_the_two_layer_forward_pass_equals_numpy(fields, key):
    spec = gflow.InContextMarkovSpec(3, 1.0, T=5)
    cfg = gflow.TransformerConfig(d_model=4, n_layers=2, residual=True, **fields)
    params = gflow.init_params(key, cfg, spec, scale=0.8)
    tokens = np.asarray(spec.sample(jax.random.key(1), 4))[:, :5]
    np.testing.assert_allclose(np.asarray(sequence_logits(params, jnp.asarray(tokens), cfg)),
                               _numpy_two_layer(params, tokens, cfg), rtol=1e-10, atol=1e-12)


def test_the_loss_never_increases_along_a_two_layer_flow(key):
    spec = gflow.InContextMarkovSpec(2, 1.0, T=4, positions="all")
    cfg = gflow.TransformerConfig(d_model=3, n_layers=2, residual=True, value=True)
    traj = gflow.simulate(gflow.init_params(key, cfg, spec, scale=0.5), spec, (0.0, 100.0), config=cfg,
                          loss="enumerate", n_save=21, progress=False, solver="Tsit5", rtol=1e-8, atol=1e-11)
    assert traj.ok and np.all(np.diff(traj.loss) <= 1e-12) and traj.loss[-1] < traj.loss[0]
    probes = gflow.analysis.induction_probes(traj)
    assert probes.previous_token.shape == probes.induction.shape == (21, 1)
    assert 0 < probes.previous_baseline < 1 and 0 < probes.induction_baseline < 1


@pytest.mark.parametrize(("make", "match"), [
    (lambda: gflow.InContextMarkovSpec(3, 0.0, T=4), "alpha"),
    (lambda: gflow.InContextMarkovSpec(1, 1.0, T=4), "`V`"),
    (lambda: gflow.InContextMarkovSpec(3, 1.0, T=1), "`T`"),
    (lambda: gflow.InContextMarkovSpec(3, 1.0, T=4, init="stationary"), "`init`"),
    (lambda: gflow.TransformerConfig(n_layers=3, residual=True), "n_layers"),
    (lambda: gflow.TransformerConfig(n_layers=0), "n_layers"),
    (lambda: gflow.TransformerConfig(n_layers=2), "residual=True"),
    (lambda: gflow.TransformerConfig(n_layers=2, residual=True, mlp=4), "attention-only"),
])
def test_bad_input_is_named(make, match):
    with pytest.raises(BAD_TYPE, match=match):
        make()


def test_two_layer_models_refuse_the_type_formulation_and_one_layer_weights(key):
    chain = gflow.MarkovSpec.sticky([0.5, 0.3, 0.2], 0.3, T=4)
    two = gflow.TransformerConfig(d_model=3, n_layers=2, residual=True)
    with pytest.raises(ValueError, match="one attention layer only"):
        gflow.loss_function(chain, two, "counts")
    one = gflow.init_params(key, gflow.TransformerConfig(d_model=3, residual=True), chain)
    with pytest.raises(ValueError, match="W_Q2.*second layer"):
        gflow.population_loss(one, chain, two, "enumerate")


def test_in_context_chains_in_settings_files():
    settings = gflow.ExperimentSettings.from_dict({"chain": {"kind": "in_context_markov", "V": 2, "alpha": 0.5,
                                                             "T": 4}, "model": {"d_model": 3, "n_layers": 2,
                                                                                "residual": True},
                                                   "flow": {"loss": "enumerate"}})
    assert isinstance(settings.record.source, gflow.InContextMarkovSpec) and settings.record.config.n_layers == 2
    with pytest.raises(ValueError, match=r"\[flow\].loss.*one attention layer only|\[flow\].loss.*MarkovSpec"):
        gflow.ExperimentSettings.from_dict({"chain": {"kind": "in_context_markov", "V": 2, "alpha": 0.5, "T": 4},
                                            "model": {"d_model": 3, "n_layers": 2, "residual": True}})




def test_a_head_forms_when_it_is_half_way_from_uniform_to_its_pattern():
    """The rule of `detect_induction_events`, on probes whose scores cross it at known times."""
    from gflow.analysis import InductionProbes, detect_induction_events

    times = np.geomspace(1.0, 1e4, 41)
    rise = lambda t0: 1 / (1 + (t0 / times) ** 4)  # noqa: E731 - a sigmoid in log time, 1/2 at t0
    prev = 0.25 + 0.75 * rise(100.0)[:, None] * np.array([[0.2, 1.0]])   # head 2 forms at t = 100
    ind = 0.5 + 0.5 * rise(1000.0)[:, None]                               # forms at t = 1000
    probes = InductionProbes(times, np.zeros(41), prev, ind, previous_baseline=0.25, induction_baseline=0.5)
    events = detect_induction_events(None, probes)
    assert [e.kind for e in events] == ["previous_token_head", "induction_head"]
    assert events[0].details["head"] == 2 and events[0].time == pytest.approx(100.0, rel=0.05)
    assert events[1].details["layer"] == 2 and events[1].time == pytest.approx(1000.0, rel=0.05)
    flat = InductionProbes(times, np.zeros(41), prev * 0 + 0.3, None, previous_baseline=0.25, induction_baseline=0.5)
    assert detect_induction_events(None, flat) == []
