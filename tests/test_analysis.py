"""Stage detectors on constructed signals with known answers, linearisation against closed forms,
and the event order on a short real simulation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gflow
from gflow.analysis import (
    Metrics,
    detect_stages,
    find_plateaus,
    lanczos_extremes,
    linearize,
    log_time_slope,
    open_directions,
    stable_rank,
    stage_table,
)

PI = np.array([0.75, 0.19, 0.05, 0.01])


def synthetic_metrics(times, loss, sv_E, focus=None, key_mass=None, qk_change=None):
    n = len(times)
    sv_E = np.asarray(sv_E, dtype=float)
    return Metrics(times=times, pi=PI, sv_E=sv_E, sv_U=sv_E.copy(), sv_EU=sv_E**2, stable_rank_E=stable_rank(sv_E),
                   stable_rank_U=stable_rank(sv_E), open_directions=open_directions(sv_E),
                   max_score=np.zeros(n), qk_change=np.zeros(n) if qk_change is None else qk_change,
                   key_mass=key_mass, focus=focus, attention=None, position_attention=None, loss=np.asarray(loss),
                   grad_norm=np.zeros(n), dloss_dlogt=log_time_slope(times, np.asarray(loss)))


def grid():
    return np.concatenate([[0.0], np.logspace(-1, 4, 101)])  # 20 points per decade


def test_stable_rank_and_open_directions_closed_forms():
    assert stable_rank(np.array([3.0, 4.0])) == pytest.approx(25 / 9)
    assert stable_rank(np.array([2.0, 0.0, 0.0])) == 1.0
    sv = np.array([[1e-3, 1e-3], [1.0, 1e-3], [1.0, 0.5], [1.0, 0.1]])
    np.testing.assert_array_equal(open_directions(sv), [0, 1, 2, 1])


def test_log_time_slope_is_exact_for_log_linear_signals():
    t = grid()
    y = 3.0 - 0.7 * np.log10(np.maximum(t, 1e-300))
    y[0] = 0.0
    np.testing.assert_allclose(log_time_slope(t, y)[1:], -0.7, rtol=1e-10)


def test_plateaus_and_escapes_on_a_staircase():
    t = grid()
    lt = np.log10(np.maximum(t, 1e-1))
    # Loss steps down at t = 10 and t = 1000 (sharp tanh steps in log time).
    loss = 1.0 - 0.3 * (1 + np.tanh((lt - 1) / 0.05)) - 0.1 * (1 + np.tanh((lt - 3) / 0.05))
    # One new singular direction opens at each step.
    s1 = 1e-3 + (1 + np.tanh((lt - 1) / 0.05)) / 2
    s2 = 1e-3 + (1 + np.tanh((lt - 3) / 0.05)) / 2
    m = synthetic_metrics(t, loss, np.stack([s1, s2, np.full_like(s1, 1e-3)], axis=1))
    plats = find_plateaus(m)
    assert len(plats) == 3
    (a0, b0), (a1, b1), (a2, b2) = plats
    # The steps are 0.05 decades wide: flat (slope < 3% of the drop per decade) until ~0.2 decades away.
    assert a0 == 0 and 5 < t[b0] < 10 and 10 < t[a1] < 20 and 500 < t[b1] < 1000 and b2 == len(t) - 1
    events = detect_stages(m)
    escapes = [e for e in events if e.kind == "escape"]
    assert [e.details["rank_increment"] for e in escapes] == [1, 1]
    assert escapes[0].time == t[b0] and escapes[1].time == t[b1]
    assert escapes[1].details["new_singular_values"][0] == pytest.approx(s2[a2], rel=1e-12)
    assert [e.cycle for e in escapes] == [1, 1] and events[-1].cycle == 2


def test_condensation_needs_rank_one_after_growth_with_frozen_attention():
    t = grid()
    lt = np.log10(np.maximum(t, 1e-1))
    grow = 1e-3 + (1 + np.tanh((lt - 1) / 0.1))
    sv = np.stack([grow, np.full_like(grow, 1e-3), np.full_like(grow, 1e-3)], axis=1)
    m = synthetic_metrics(t, 1.0 - 0.1 * grow, sv, qk_change=np.where(t > 100, 5.0, 0.01))
    (cond,) = [e for e in detect_stages(m) if e.kind == "condensation"]
    # First time with stable rank < 1.05 and norm grown 10x: solve on the grid.
    ok = (stable_rank(sv) < 1.05) & (np.linalg.norm(sv, axis=1) > 10 * np.linalg.norm(sv[0]))
    assert cond.time == t[np.argmax(ok)]
    assert cond.details["attention_frozen"] and cond.details["qk_change"] == 0.01


def test_focus_peak_and_dilution_times_on_a_constructed_focus_signal():
    t = grid()
    n = len(t)
    i_on, i_peak, i_dil = 40, 60, 70
    F = np.zeros(n)
    F[i_on:i_peak + 1] = np.linspace(0.02, 0.5, i_peak - i_on + 1)
    F[i_peak + 1:i_dil] = 0.45  # a 10% dip is not dilution
    F[i_dil:] = 0.2  # a 60% fall is
    mass = np.tile(PI, (n, 1))
    mass[i_peak] = [0.85, 0.10, 0.04, 0.01]
    m = synthetic_metrics(t, np.ones(n), np.full((n, 3), 1e-3), focus=F, key_mass=mass[:, None, :])
    ev = {e.kind: e for e in detect_stages(m)}
    assert ev["focus_onset"].time == t[i_on]
    assert ev["focus_peak"].time == t[i_peak]
    assert ev["focus_peak"].details["gained_tokens"] == [0] and ev["focus_peak"].details["frequency_ordered"]
    assert ev["dilution"].time == t[i_dil] and ev["dilution"].details["fall_fraction"] == pytest.approx(0.6)
    assert "focus_peak" in stage_table(list(ev.values()))


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


@pytest.mark.slow
def test_demo_flow_shows_the_stages_in_order():
    settings = gflow.ExperimentSettings.demo()
    spec, config, run = settings.build()
    p0 = gflow.init_params(jax.random.key(0), config, spec, scale=run["scale"])
    traj = gflow.simulate(p0, spec, (0, run["t_end"]), config=config, loss="meanfield", n_save=241, progress=False)
    events = detect_stages(traj)
    kinds = [e.kind for e in events]
    first = {k: kinds.index(k) for k in ("condensation", "focus_onset", "focus_peak", "dilution")}
    assert first["condensation"] < first["focus_onset"] < first["focus_peak"] < first["dilution"]
    peak = events[first["focus_peak"]]
    assert peak.details["gained_tokens"][0] == 0  # the most frequent token
    late = [e for e in events[first["dilution"]:] if e.kind == "escape" and e.details["rank_increment"] >= 1]
    assert late, stage_table(events)


def test_short_real_flow_condenses_before_attention_moves():
    spec = gflow.MarkovSpec.sticky((0.75, 0.19, 0.05, 0.01), 0.5, T=4)
    config = gflow.TransformerConfig(d_model=4)
    p0 = gflow.init_params(jax.random.key(0), config, spec, scale=1e-3)
    traj = gflow.simulate(p0, spec, (0, 400.0), config=config, loss="meanfield", n_save=61, progress=False)
    events = detect_stages(traj)
    kinds = [e.kind for e in events]
    assert "condensation" in kinds and "focus_onset" in kinds
    assert kinds.index("condensation") < kinds.index("focus_onset")
    cond = events[kinds.index("condensation")]
    assert cond.details["attention_frozen"]
    escape = [e for e in events if e.kind == "escape"][0]
    assert escape.time < cond.time * 2 and escape.details["rank_increment"] == 1


def test_metrics_for_positional_configs_use_position_maps(key):
    spec = gflow.MarkovSpec.sticky([0.6, 0.4], 0.5, T=3)
    cfg = gflow.TransformerConfig(d_model=2, positional="learned")
    p0 = gflow.init_params(key, cfg, spec, scale=0.5)
    traj = gflow.simulate(p0, spec, (0, 5.0), config=cfg, loss="enumerate", n_save=5, progress=False)
    m = gflow.analysis.compute_metrics(traj)
    assert m.focus is None and m.position_attention.shape == (5, 1, 3, 3)
    np.testing.assert_allclose(m.position_attention.sum(-1), 1.0, rtol=1e-12)
    assert np.all(np.triu(m.position_attention[0, 0], 1) == 0)  # causal
    assert dataclasses.replace(m, focus=None) is not None
