"""The sparse high-order teacher (Yüksel et al. 2026) as a data source: its conditional law against a
direct evaluation of the formula, its exact loss against a brute-force sum over whole sequences, its
class-ladder levels, samples against the exact loss, and bad arguments."""

import itertools
import json

import jax
import numpy as np
import pytest

import gflow
from gflow.data import SparseLagSpec

CONFIG = gflow.TransformerConfig(d_model=4, n_heads=2, positional="learned", value=True)


def direct_probs(spec: SparseLagSpec, context) -> np.ndarray:
    """softmax(sum_k A_k sum_{i in I_k} alpha_i e_{x_(t-i)}), term by term; context oldest first."""
    A = np.asarray(spec.A)
    lags = gflow.data.block_lags(spec.spans, spec.stride)
    logits = np.zeros(spec.V)
    for k, (block, alphas) in enumerate(zip(lags, spec.weights, strict=True)):
        for i, alpha in zip(block, alphas, strict=True):
            logits += alpha * A[k][:, context[-i]]
    e = np.exp(logits - logits.max())
    return e / e.sum()


@pytest.mark.parametrize("spans, stride, weights", [((1, 1, 1), None, None), ((2, 1), None, ((0.3, 0.9), (2.0,))),
                                                    ((2, 2), 1, None)])
def test_the_teacher_is_the_formula(spans, stride, weights):
    spec = SparseLagSpec.random(4, 3, spans, m=2.0, stride=stride, weights=weights)
    contexts = np.asarray(jax.random.randint(jax.random.key(0), (20, spec.L), 0, 3))
    got = np.asarray(spec.next_token_probs(contexts))
    want = np.stack([direct_probs(spec, c) for c in contexts])
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)
    if stride == 1:  # overlapping blocks: lags {1, 2} and {2, 3}
        assert spec.L == 3 and spec.weights == ((0.5, 0.5), (0.5, 0.5))


def test_the_exact_loss_is_the_sum_over_whole_sequences():
    """`enumerate` against a brute-force sum: every sequence x_1..x_(T+1), its probability from the
    formula (burn-in uniform, then the teacher), times the model's loss on that one sequence."""
    spec = SparseLagSpec.random(1, 2, (1, 1), m=2.0, T=3, positions="all")
    params = gflow.init_params(2, CONFIG, spec, scale=0.8)
    exact = float(gflow.population_loss(params, spec, CONFIG, "enumerate"))
    total = 0.0
    for x in itertools.product(range(2), repeat=4):
        p = 0.25  # the burn-in window x_1 x_2
        for t in (2, 3):
            p *= direct_probs(spec, x[t - 2:t])[x[t]]
        seq = gflow.losses.loss_function(spec, CONFIG, "dataset", dataset=np.asarray([x], np.int32))
        total += p * float(seq(params))
    assert exact == pytest.approx(total, rel=1e-12)


def test_the_class_ladder_levels():
    spec = SparseLagSpec.random(3, 3, (1, 1, 1), m=2.0)
    levels = spec.block_levels()
    assert all(a > b for a, b in zip(levels, levels[1:], strict=False))
    assert list(spec.reference_levels().values()) == levels[::-1]
    # With no block the teacher is uniform: its best loss is ln V at every level.
    assert spec.restrict(0).block_levels() == pytest.approx([np.log(3)] * 4, rel=1e-14)
    # The full teacher's best loss is its expected entropy, which the enumerated targets give too.
    tokens, prob, targets = spec.sequence_law(10**6)
    entropy = -np.sum(targets[:, -1] * np.log(targets[:, -1]), axis=1)
    assert levels[-1] == pytest.approx(float(prob @ entropy), rel=1e-12)
    # Restricting to k blocks leaves the others' lags unread: the 1-block teacher ignores lags 2, 3.
    one = spec.restrict(1)
    a = np.asarray(one.next_token_probs(np.array([[0, 1, 2], [2, 0, 2]])))
    np.testing.assert_allclose(a[0], a[1], rtol=1e-14)


def test_samples_agree_with_the_exact_law():
    spec = SparseLagSpec.random(5, 3, (1, 2), m=1.7, context="stationary", T=4)
    law = spec.initial_window_law()
    np.testing.assert_allclose(spec.advance(law, spec.window_transitions()), law, atol=1e-14)
    params = gflow.init_params(4, CONFIG, spec, scale=0.8)
    exact = float(gflow.population_loss(params, spec, CONFIG, "enumerate"))
    data = np.asarray(spec.sample(jax.random.key(9), 20000))
    fn = gflow.loss_function(spec, CONFIG, "dataset", dataset=data)
    sampled = float(fn(params))
    # Standard error from 50 interleaved subsets of the sample.
    pieces = [float(gflow.population_loss(params, spec, CONFIG, "dataset", dataset=data[i::50])) for i in range(50)]
    se = np.std(pieces) / np.sqrt(50)
    assert abs(sampled - exact) < 4 * se, (sampled, exact, se)


def test_files_and_methods():
    spec = SparseLagSpec.random(0, 3, (1, 1), labels=("a", "b", "c"))
    again = gflow.data.source_from_json(json.loads(json.dumps(spec.to_json())))
    assert again.cache_key() == spec.cache_key() and again.labels == ("a", "b", "c")
    with pytest.raises(ValueError, match="meanfield.*first-order Markov chain"):
        gflow.losses.loss_spec(spec, gflow.TransformerConfig(d_model=4), "meanfield")


def test_bad_arguments_are_named():
    key = 0
    with pytest.raises(ValueError, match="`spans` must be a non-empty"):
        SparseLagSpec.random(key, 3, ())
    with pytest.raises(ValueError, match="`spans`"):
        SparseLagSpec.random(key, 3, (2, 0))
    with pytest.raises(ValueError, match="`m`"):
        SparseLagSpec.random(key, 3, (1, 1), m=0.0)
    with pytest.raises(ValueError, match=r"`weights\[1\]` must be 1 finite"):
        SparseLagSpec.random(key, 3, (2, 1), weights=((0.5, 0.5), (0.2, 0.8)))
    with pytest.raises(ValueError, match="one sequence per block"):
        SparseLagSpec.random(key, 3, (2, 1), weights=((0.5, 0.5),))
    with pytest.raises(ValueError, match="`stride`"):
        SparseLagSpec.random(key, 3, (2, 1), stride=0)
    with pytest.raises(ValueError, match="`rank`"):
        SparseLagSpec.random(key, 3, (1,), rank=4)
    with pytest.raises(ValueError, match="`strengths` must be 2"):
        SparseLagSpec.random(key, 3, (1, 1), strengths=(1.0,))
    with pytest.raises(ValueError, match="`A` must have shape"):
        SparseLagSpec(np.zeros((2, 3, 4)), (1, 1))
    with pytest.raises(ValueError, match="`T` = 2 is shorter"):
        SparseLagSpec.random(key, 3, (2, 1), T=2)
    with pytest.raises(ValueError, match="`context`"):
        SparseLagSpec.random(key, 3, (1,), context="burnin")
    with pytest.raises(ValueError, match="`contexts` must have shape"):
        SparseLagSpec.random(key, 3, (1, 1)).next_token_probs(np.zeros((4, 3), np.int32))
    big = SparseLagSpec.random(key, 8, (4, 4, 4))
    with pytest.raises(ValueError, match="enumerate.*budget"):
        gflow.losses.loss_spec(big, CONFIG, "enumerate")
    with pytest.raises(ValueError, match="context='stationary'.*budget"):
        SparseLagSpec.random(key, 8, (4, 4, 4), context="stationary")


def test_lag_block_attention_probe():
    """Uniform attention (zero queries and keys) pays each block its share of the visible positions;
    with contiguous blocks and T = L the blocks cover the whole context, so any attention sums to one."""
    from gflow.analysis import compute_metrics, lag_block_attention
    spec = SparseLagSpec.random(6, 3, (1, 2), m=2.0, T=4, positions="all")
    params = gflow.init_params(1, CONFIG, spec, scale=0.7)
    flat = type(params)(**{**params.__dict__, "W_Q": 0 * params.W_Q, "W_K": 0 * params.W_K})
    traj = gflow.simulate(flat, spec, (0.0, 1.0), config=CONFIG, loss="enumerate", n_save=3, progress=False)
    mass = lag_block_attention(compute_metrics(traj), spec)
    # t = 3, 4 are scored after the burn-in (L = 3), equally: block k gets span_k (1/3 + 1/4) / 2 at t = 0.
    np.testing.assert_allclose(mass[0], np.array([[1, 2]] * 2) * (1 / 3 + 1 / 4) / 2, rtol=1e-12)
    last = SparseLagSpec.random(6, 3, (1, 2), m=2.0)
    traj = gflow.simulate(gflow.init_params(2, CONFIG, last, scale=0.7), last, (0.0, 5.0), config=CONFIG,
                          loss="enumerate", n_save=4, progress=False)
    mass = lag_block_attention(compute_metrics(traj), last)
    np.testing.assert_allclose(mass.sum(axis=-1), 1.0, rtol=1e-12)
    assert np.abs(mass[-1] - [1 / 3, 2 / 3]).max() > 1e-3  # not the uniform shares: the scores are not zero
    with pytest.raises(ValueError, match="T = 3.*T = 4"):
        lag_block_attention(compute_metrics(traj), spec)
