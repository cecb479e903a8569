"""Linearisation against closed forms, Lanczos against dense spectra, and attention statistics
under the loss a run used (two exact losses agree; positions get position maps)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gflow
from gflow.analysis import (
    lanczos_extremes,
    linearize,
    log_time_slope,
    open_directions,
    stable_rank,
)


def test_stable_rank_and_open_directions_closed_forms():
    assert stable_rank(np.array([3.0, 4.0])) == pytest.approx(25 / 9)
    assert stable_rank(np.array([2.0, 0.0, 0.0])) == 1.0
    sv = np.array([[1e-3, 1e-3], [1.0, 1e-3], [1.0, 0.5], [1.0, 0.1]])
    np.testing.assert_array_equal(open_directions(sv), [0, 1, 2, 1])


def test_log_time_slope_is_exact_for_log_linear_signals():
    t = np.concatenate([[0.0], np.logspace(-1, 4, 101)])
    y = 3.0 - 0.7 * np.log10(np.maximum(t, 1e-300))
    y[0] = 0.0
    np.testing.assert_allclose(log_time_slope(t, y)[1:], -0.7, rtol=1e-10)


def test_dense_hessian_matches_a_closed_form_saddle():
    """At W = 0 the loss of the bilinear model logits = W_E W_U has Hessian blocks [[0, G], [G^T, 0]]
    whose eigenvalues are +- the singular values of G = -(P - 1/V) (per-token weighting)."""
    spec = gflow.MarkovSpec.sticky([0.5, 0.3, 0.2], 0.6, T=3)
    cfg = gflow.TransformerConfig(d_model=1, residual=True, value=True)
    zero = gflow.TransformerParams(W_E=jnp.zeros((3, 1)), W_Q=jnp.zeros((1, 1, 1)), W_K=jnp.zeros((1, 1, 1)),
                                   W_V=jnp.zeros((1, 1, 1)), W_O=jnp.zeros((1, 1, 1)), W_U=jnp.zeros((1, 3)))
    lin = linearize(zero, spec, cfg, loss="meanfield", method="dense")
    pi, P = spec.stationary(), np.asarray(spec.P)
    G = -(pi[:, None] * (P - 1 / 3))  # d^2 L / dW_E[a] dW_U[c] at zero
    s = np.linalg.svd(G, compute_uv=False)
    assert lin.eigenvalues[0] == pytest.approx(-s[0], rel=1e-10)
    assert lin.eigenvalues[-1] == pytest.approx(s[0], rel=1e-10)
    assert lin.saddle_index >= 1 and lin.escape_rate == pytest.approx(s[0], rel=1e-10)


def test_lanczos_agrees_with_dense_on_the_extremes(key):
    spec = gflow.MarkovSpec.sticky([0.5, 0.3, 0.2], 0.4, T=3)
    cfg = gflow.TransformerConfig(d_model=4, value=True, residual=True)
    p = gflow.init_params(key, cfg, spec, scale=0.6)
    dense = linearize(p, spec, cfg, loss="meanfield", method="dense")
    lz = linearize(p, spec, cfg, loss="meanfield", method="lanczos", lanczos_steps=60)
    assert lz.eigenvalues[0] == pytest.approx(dense.eigenvalues[0], rel=1e-8, abs=1e-10)
    assert lz.eigenvalues[-1] == pytest.approx(dense.eigenvalues[-1], rel=1e-8)
    # And on a plain symmetric matrix with a known spectrum.
    A = np.diag(np.linspace(-2.0, 5.0, 50))
    vals, _ = lanczos_extremes(lambda v: jnp.asarray(A) @ v, 50, 50, jax.random.key(0))
    assert vals[0] == pytest.approx(-2.0, abs=1e-10) and vals[-1] == pytest.approx(5.0, abs=1e-10)
    with pytest.raises(ValueError, match="`method`"):
        linearize(p, spec, cfg, loss="meanfield", method="arnoldi")


def test_metrics_for_positional_configs_use_position_maps(key):
    """With positions the statistics come from the enumerated sequences: position maps, and a focus
    index and key masses too (they were missing, silently)."""
    spec = gflow.MarkovSpec.sticky([0.6, 0.4], 0.5, T=3)
    cfg = gflow.TransformerConfig(d_model=2, positional="learned")
    p0 = gflow.init_params(key, cfg, spec, scale=0.5)
    traj = gflow.simulate(p0, spec, (0, 5.0), config=cfg, loss="enumerate", n_save=5, progress=False)
    m = gflow.analysis.compute_metrics(traj)
    assert m.position_attention.shape == (5, 1, 3, 3)
    np.testing.assert_allclose(m.position_attention.sum(-1), 1.0, rtol=1e-12)
    assert np.all(np.triu(m.position_attention[0, 0], 1) == 0)  # causal
    assert m.focus.shape == (5,) and np.all(m.focus >= -1e-15)
    np.testing.assert_allclose(m.key_mass.sum(-1), 1.0, rtol=1e-12)
    assert dataclasses.replace(m, focus=None) is not None


def test_attention_statistics_agree_between_two_exact_losses(key):
    """Without positions, counts (type-level states) and enumerate (every sequence) are two exact ways
    to take the same expectation: key masses, focus index and attention maps must agree."""
    spec = gflow.MarkovSpec.sticky([0.5, 0.3, 0.2], 0.4, T=5, positions="all")
    cfg = gflow.TransformerConfig(d_model=3, n_heads=2)
    p = gflow.stack_params([gflow.init_params(key, cfg, spec, scale=1.5)])
    stats = {method: gflow.analysis.attention_statistics(p, gflow.loss_function(spec, cfg, method))
             for method in ("counts", "enumerate")}
    for name in ("key_mass", "uniform_mass", "focus", "attention"):
        np.testing.assert_allclose(stats["counts"][name], stats["enumerate"][name], rtol=1e-10, atol=1e-13)
    assert float(stats["counts"]["focus"].min()) > 1e-3  # not a trivial agreement of zeros
