import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gflow


def test_sticky_has_pi_as_stationary_law():
    pi = np.array([0.75, 0.19, 0.05, 0.01])
    spec = gflow.MarkovSpec.sticky(pi, 0.5, T=3)
    np.testing.assert_allclose(spec.stationary(), pi, atol=1e-14)
    np.testing.assert_allclose(np.asarray(spec.init), pi)
    P = np.asarray(spec.P)
    np.testing.assert_allclose(np.diag(P), 0.5 + 0.5 * pi)


def test_binary_closed_forms():
    p, q = 0.2, 0.3
    spec = gflow.MarkovSpec.binary(p, q, T=2)
    pi = np.array([q, p]) / (p + q)
    np.testing.assert_allclose(spec.stationary(), pi, atol=1e-14)

    def h(x):
        return -x * np.log(x) - (1 - x) * np.log(1 - x)

    assert spec.entropy_rate() == pytest.approx(pi[0] * h(p) + pi[1] * h(q), abs=1e-14)
    assert spec.unigram_entropy() == pytest.approx(h(pi[0]), abs=1e-14)


def test_entropy_rate_below_unigram_entropy(key):
    spec = gflow.MarkovSpec.dirichlet(key, 5, 0.7, T=3)
    assert spec.entropy_rate() < spec.unigram_entropy() <= np.log(5) + 1e-12


def test_sample_shape_and_transition_frequencies(key):
    spec = gflow.MarkovSpec.sticky([0.5, 0.3, 0.2], 0.6, T=9)
    x = np.asarray(spec.sample(key, 4000))
    assert x.shape == (4000, 10) and x.dtype == np.int32
    counts = np.zeros((3, 3))
    np.add.at(counts, (x[:, :-1].ravel(), x[:, 1:].ravel()), 1)
    freq = counts / counts.sum(axis=1, keepdims=True)
    # 36,000 transitions: each row has >= 7,000 draws, so frequencies are within ~0.006 (1 s.d.).
    np.testing.assert_allclose(freq, np.asarray(spec.P), atol=0.03)
    np.testing.assert_allclose(np.bincount(x[:, 0], minlength=3) / 4000, [0.5, 0.3, 0.2], atol=0.03)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"P": np.ones((2, 3)) / 3}, "square"),
        ({"P": np.array([[0.5, np.nan], [0.5, 0.5]])}, "non-finite"),
        ({"P": np.array([[1.2, -0.2], [0.5, 0.5]])}, "negative"),
        ({"P": np.array([[0.6, 0.6], [0.5, 0.5]])}, "sum to 1"),
        ({"P": np.eye(2)}, "stationary law is not unique"),
        ({"P": np.full((2, 2), 0.5), "init": [0.2, 0.2]}, "`init` must sum to 1"),
        ({"P": np.full((2, 2), 0.5), "init": [0.5, 0.25, 0.25]}, "`init` must be a distribution"),
        ({"P": np.full((2, 2), 0.5), "T": 0}, "`T`"),
    ],
)
def test_from_matrix_rejects_bad_input(kwargs, match):
    kwargs = {"T": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        gflow.MarkovSpec.from_matrix(**kwargs)


def test_identity_chain_is_fine_with_explicit_init():
    spec = gflow.MarkovSpec.from_matrix(np.eye(2), 3, init=[0.5, 0.5])
    assert spec.V == 2


@pytest.mark.parametrize("lam", [1.0, -0.1, 1.5])
def test_sticky_rejects_lam_outside_unit_interval(lam):
    with pytest.raises(ValueError, match="`lam`"):
        gflow.MarkovSpec.sticky([0.5, 0.5], lam, T=3)


def test_other_constructor_errors(key):
    with pytest.raises(ValueError, match="`positions`"):
        gflow.MarkovSpec.sticky([0.5, 0.5], 0.1, T=3, positions="first")
    with pytest.raises(ValueError, match="`pi`"):
        gflow.MarkovSpec.sticky([[0.5, 0.5]], 0.1, T=3)
    with pytest.raises(ValueError, match="`V`"):
        gflow.MarkovSpec.dirichlet(key, 1, 1.0, T=3)
    with pytest.raises(ValueError, match="`alpha`"):
        gflow.MarkovSpec.dirichlet(key, 3, 0.0, T=3)
    with pytest.raises(ValueError, match="`p` and `q`"):
        gflow.MarkovSpec.binary(0.0, 0.0, T=3)
    with pytest.raises(ValueError, match="`n`"):
        gflow.MarkovSpec.binary(0.1, 0.2, T=3).sample(key, 0)
    with pytest.raises(ValueError, match="`order`"):
        gflow.MarkovSpec(P=jnp.full((2, 2), 0.5), init=jnp.full(2, 0.5), T=2, order=2)


def test_dirichlet_rows_are_distributions(key):
    spec = gflow.MarkovSpec.dirichlet(key, 6, 0.3, T=2, positions="all")
    P = np.asarray(spec.P)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-12)
    assert spec.positions == "all"
    assert not np.allclose(P, np.asarray(gflow.MarkovSpec.dirichlet(jax.random.key(7), 6, 0.3, T=2).P))


def test_a_float32_chain_within_its_rounding_is_accepted_and_renormalised():
    """A float32 matrix normalised to 1 (PyTorch, JAX without x64) sums to 1 +- 1e-7, which the
    float64 tolerance of 1e-9 refused, with advice that could not help."""
    rng = np.random.default_rng(0)
    P = rng.random((5, 5)).astype(np.float32)
    P /= P.sum(axis=1, keepdims=True)
    spec = gflow.MarkovSpec.from_matrix(P, T=4)
    assert np.abs(np.asarray(spec.P).sum(axis=1) - 1).max() < 1e-15
    np.testing.assert_allclose(np.asarray(spec.P), P, rtol=1e-6)
    pi = np.array([0.6, 0.3, 0.1], np.float32)
    assert abs(float(np.asarray(gflow.MarkovSpec.sticky(pi, 0.5, T=4).init).sum()) - 1) < 1e-15
    bf16 = gflow.MarkovSpec.from_matrix(np.array([[0.3, 0.7], [0.6, 0.4]], dtype=jnp.bfloat16), T=3)  # JAX's bfloat16
    assert np.abs(np.asarray(bf16.P).sum(axis=1) - 1).max() < 1e-15
    with pytest.raises(ValueError, match=r"row 0 sums to 1.00001"):  # beyond float32 rounding: refused
        gflow.MarkovSpec.from_matrix(np.array([[0.5, 0.50001], [0.5, 0.5]], np.float32), T=3)
    with pytest.raises(ValueError, match=r"it sums to 1.1\."):
        gflow.MarkovSpec.sticky([0.6, 0.5], 0.5, T=3)


def test_a_dirichlet_draw_with_closed_classes_gets_its_own_advice():
    failures = []
    for seed in range(30):  # alpha = 0.01: entries underflow to exactly 0 in a few draws
        try:
            gflow.MarkovSpec.dirichlet(seed, 5, 0.01, T=5)
        except ValueError as e:
            failures.append(str(e))
    assert failures and all("`alpha` = 0.01" in m and "init=" in m and "larger alpha" in m for m in failures)
