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
    with pytest.raises(ValueError, match="must be the run's Metrics.*compute_metrics"):  # was an AttributeError
        lag_block_attention(traj, last)


def test_kl_to_restricted_teachers_closed_form():
    """With W_U = 0 the model predicts uniformly, so D_k = E[sum p_k log p_k] + log V, where p_k is the
    teacher of blocks 1..k: the Bayes law of the next token given the lags of those blocks only.
    Checked against a brute-force sum over whole sequences with the formula's probabilities. The
    trajectory's first point is the initial model, near none of the teachers."""
    from gflow.analysis import restricted_teacher_kl
    spec = SparseLagSpec.random(7, 3, (1, 1), m=2.0, T=3, positions="all")
    params = gflow.init_params(3, CONFIG, spec, scale=0.7)
    mute = type(params)(**{**params.__dict__, "W_U": 0 * params.W_U})
    traj = gflow.simulate(mute, spec, (0.0, 1.0), config=CONFIG, loss="enumerate", n_save=2, progress=False)
    D = restricted_teacher_kl(traj, spec)
    joint = {}  # (query t, blocks k, the lags 1..k it sees, next token): probability
    for x in itertools.product(range(3), repeat=4):
        p = 1 / 9 * direct_probs(spec, x[:2])[x[2]] * direct_probs(spec, x[1:3])[x[3]]  # uniform burn-in x_1 x_2
        for t in (2, 3):  # queries after the burn-in (L = 2) predict x_(t+1)
            for k in range(spec.K + 1):
                key = (t, k, x[t - k:t], x[t])
                joint[key] = joint.get(key, 0.0) + p
    seen = {}
    for (t, k, lags, _), p in joint.items():
        seen[t, k, lags] = seen.get((t, k, lags), 0.0) + p
    want = np.zeros(spec.K + 1)
    for (t, k, lags, _), p in joint.items():  # E sum_y p_k log p_k = sum P(lags, y) log P(y | lags)
        want[k] += 0.5 * p * (np.log(p / seen[t, k, lags]) + np.log(3))
    np.testing.assert_allclose(D[0], want, rtol=1e-12, atol=1e-15)
    assert np.all(D[-1] > 0) and D[0, 0] > 0  # the no-context teacher is the next token's law, not uniform


def _synthetic_probes(spec, times, loss, mass, ratios):
    """Probes with the prefix classes' teachers and KLs `ratios` times each class's scale."""
    from gflow.analysis import LagProbes, class_teachers, prefix_classes, uniform_block_share
    teachers = class_teachers(spec, prefix_classes(spec))
    return LagProbes(times=times, loss=loss, mass=mass, share=uniform_block_share(spec),
                     kl=np.zeros((len(times), spec.K + 1)), levels=spec.block_levels(), position_attention=None,
                     teachers=teachers, class_kl=ratios * teachers.scales)


def test_lag_events_on_known_signals():
    """Signals built by hand, so the events are known: the model's KL to the {1} teacher, then to the
    {1, 2} teacher, falls through half of the class's scale at t = 10 and 10^3 (block acquisitions in
    that order, timed by interpolation in log time); heads 1 and 2 lean on block 1 from the same time
    (competition), then head 2 moves to block 2 (specialisation) just before the model enters {1, 2}."""
    from gflow.analysis import LEAN, detect_lag_events
    spec = SparseLagSpec.random(8, 3, (1, 1), m=2.0)
    levels = spec.block_levels()
    times = np.geomspace(1.0, 1e4, 41)
    s = np.log10(times)
    up1, up2 = 1 / (1 + np.exp(-8 * (s - 1))), 1 / (1 + np.exp(-8 * (s - 3)))
    loss = levels[0] + (levels[1] - levels[0]) * up1 + (levels[2] - levels[1]) * up2
    ratios = np.stack([up1, 1 - up1, 1 - up2], axis=1)  # KL / scale: no context, {1}, {1, 2}
    share = 0.5
    mass = np.full((41, 2, 2), share)
    lean = np.clip(s - 1.5, 0, 1) * 0.4  # both heads leave uniform attention for block 1 after t = 10^1.5
    mass[:, :, 0] += lean[:, None]
    mass[:, :, 1] -= lean[:, None]
    switch = s >= 2.95  # head 2 turns to block 2 at t = 10^3
    mass[switch, 1] = mass[switch, 1, ::-1]
    events = detect_lag_events(None, spec, _synthetic_probes(spec, times, loss, mass, ratios))
    kinds = [e.kind for e in events]
    assert kinds == ["block_acquired", "competition", "specialisation", "block_acquired"], kinds
    first, compete, special, second = events
    assert first.details["block"] == 1 and second.details["block"] == 2
    assert first.time == pytest.approx(10.0, rel=0.02) and second.time == pytest.approx(1e3, rel=0.02)
    assert compete.details["heads"] == [1, 2] and compete.details["block"] == 1
    assert compete.time == pytest.approx(10 ** (1.5 + LEAN / 0.4), rel=0.02)  # the excess reaches LEAN
    assert special.details["heads_to_blocks"] == {1: 1, 2: 2} and special.details["after_competition"]
    assert 10**2.9 < special.time <= 1e3
    with pytest.raises(ValueError, match="`spec` must be a SparseLagSpec"):
        detect_lag_events(None, gflow.MarkovSpec.sticky(pi=[0.5, 0.5], lam=0.5, T=4), _synthetic_probes(
            spec, times, loss, mass, ratios))
