import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gflow
from conftest import BAD_TYPE
from gflow.model import sequence_logits, type_logits


def test_init_shapes_follow_transformerlens(demo_spec, key):
    cfg = gflow.TransformerConfig(n_heads=2, d_model=5, d_head=3, value=True, positional="learned")
    p = gflow.init_params(key, cfg, demo_spec, scale=0.1)
    assert p.W_E.shape == (4, 5) and p.W_pos.shape == (6, 5) and p.W_U.shape == (5, 4)
    assert p.W_Q.shape == p.W_K.shape == p.W_V.shape == (2, 5, 3) and p.W_O.shape == (2, 3, 5)
    assert all(w.dtype == jnp.float64 for w in jax.tree.leaves(p))
    default = gflow.init_params(key, gflow.TransformerConfig(), demo_spec)
    assert default.W_pos is None and default.W_V is None and default.W_O is None


def test_init_gamma_sets_fan_in_power(key):
    spec = gflow.MarkovSpec.sticky(np.full(16, 1 / 16), 0.3, T=2)
    cfg = gflow.TransformerConfig(d_model=64)
    p = gflow.init_params(key, cfg, spec, gamma=1.0)
    # 1024 entries each: the sample standard deviation is within ~5% of sigma.
    assert float(jnp.std(p.W_E)) == pytest.approx(1 / 16, rel=0.1)
    assert float(jnp.std(p.W_Q)) == pytest.approx(1 / 64, rel=0.1)
    with pytest.raises(ValueError, match="not both"):
        gflow.init_params(key, cfg, spec, scale=0.1, gamma=1.0)
    with pytest.raises(ValueError, match="`scale`"):
        gflow.init_params(key, cfg, spec, scale=-1.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"n_heads": 0}, "n_heads"), ({"positional": "rotary"}, "positional"),
     ({"attn_scale": 0.0}, "attn_scale"), ({"d_head": 0}, "d_head")],
)
def test_config_rejects_bad_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gflow.TransformerConfig(**kwargs)


@pytest.mark.parametrize(("kwargs", "match"), [({"d_model": 2.5}, "d_model"), ({"value": 1}, "value")])
def test_config_rejects_fields_of_the_wrong_type(kwargs, match):
    with pytest.raises(BAD_TYPE, match=match):
        gflow.TransformerConfig(**kwargs)


def test_check_params_names_the_mismatch(demo_spec, key):
    p = gflow.init_params(key, gflow.TransformerConfig(d_model=4), demo_spec)
    with pytest.raises(ValueError, match="W_E"):
        gflow.population_loss(p, demo_spec, gflow.TransformerConfig(d_model=5), "meanfield")
    with pytest.raises(ValueError, match="W_V"):
        gflow.population_loss(p, demo_spec, gflow.TransformerConfig(d_model=4, value=True), "meanfield")


@pytest.mark.parametrize("value", [False, True])
@pytest.mark.parametrize("residual", [False, True])
def test_type_level_forward_equals_sequence_forward(key, value, residual):
    """The counts/meanfield forward (attention over token types weighted by counts) must give the
    logits of the ordinary causal forward on any sequence with those counts, in any order."""
    spec = gflow.MarkovSpec.sticky([0.4, 0.3, 0.2, 0.1], 0.2, T=7)
    cfg = gflow.TransformerConfig(n_heads=2, d_model=5, d_head=3, value=value, residual=residual)
    p = gflow.init_params(key, cfg, spec, scale=0.8)
    seqs = np.asarray(spec.sample(jax.random.key(3), 5))[:, :7]
    seq_logits = sequence_logits(p, jnp.asarray(seqs), cfg)
    for b in range(5):
        for t in range(7):
            counts = np.bincount(seqs[b, : t + 1], minlength=4).astype(np.float64)
            lt = type_logits(p, cfg, jnp.asarray([seqs[b, t]]), jnp.asarray(counts[None]))
            np.testing.assert_allclose(lt[0], seq_logits[b, t], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("value", [False, True])
def test_sequence_forward_matches_a_head_by_head_loop(key, value):
    """The causal forward against numpy written head by head and position by position: each head's
    scores, its softmax over the keys up to the query, its values (`a W_V W_O`, or `a` itself), and the
    heads' outputs summed (`mix_values` sums the heads' weights first when there is no value path)."""
    spec = gflow.MarkovSpec.sticky([0.4, 0.3, 0.2, 0.1], 0.2, T=6)
    cfg = gflow.TransformerConfig(n_heads=3, d_model=5, d_head=2, value=value)
    p = gflow.init_params(key, cfg, spec, scale=0.8)
    tokens = np.asarray(spec.sample(jax.random.key(4), 2))[:, :6]
    got = np.asarray(sequence_logits(p, jnp.asarray(tokens), cfg))
    W = {name: np.asarray(getattr(p, name)) for name in ("W_E", "W_Q", "W_K", "W_U")}
    if value:
        W_V, W_O = np.asarray(p.W_V), np.asarray(p.W_O)
    for b in range(tokens.shape[0]):
        a = W["W_E"][tokens[b]]
        for t in range(tokens.shape[1]):
            out = np.zeros(cfg.d_model)
            for k in range(cfg.n_heads):
                scores = np.array([cfg.score_scale * (a[t] @ W["W_Q"][k]) @ (a[s] @ W["W_K"][k]) for s in range(t + 1)])
                weights = np.exp(scores - scores.max())
                weights /= weights.sum()
                vectors = a[: t + 1] @ W_V[k] @ W_O[k] if value else a[: t + 1]
                out += weights @ vectors
            np.testing.assert_allclose(got[b, t], out @ W["W_U"], rtol=1e-12, atol=1e-12)
