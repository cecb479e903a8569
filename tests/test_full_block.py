"""The full one-layer block (LayerNorm, MLP, tied embeddings, unembedding bias): the forward pass
against an independent NumPy implementation, the type formulation against enumeration, the flow's
invariant, round trips through files and settings, and the errors of bad configurations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gflow
from conftest import BAD_TYPE
from gflow.app import main
from gflow.model import sequence_logits, type_logits

ERF = np.vectorize(math.erf)


def _layernorm(x, w, b):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)  # biased, as PyTorch's
    return (x - mean) / np.sqrt(var + 1e-5) * w + b


def _activation(x, name):
    return 0.5 * x * (1.0 + ERF(x / math.sqrt(2.0))) if name == "gelu" else np.maximum(x, 0.0)


def numpy_logits(p, tokens, cfg):
    """The block written from its description (issue 22), in NumPy, one sequence and head at a time."""
    p = {k: (None if v is None else np.asarray(v)) for k, v in vars(p).items()}
    pre = cfg.layernorm == "pre"
    out = []
    for seq in np.asarray(tokens):
        T = len(seq)
        h = p["W_E"][seq] + (p["W_pos"][:T] if cfg.positional == "learned" else 0.0)
        a = _layernorm(h, p["ln1_w"], p["ln1_b"]) if pre else h
        z = np.zeros_like(h)
        for k in range(cfg.n_heads):
            scores = cfg.score_scale * (a @ p["W_Q"][k]) @ (a @ p["W_K"][k]).T
            scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
            alpha = np.exp(scores - scores.max(axis=1, keepdims=True))
            alpha /= alpha.sum(axis=1, keepdims=True)
            v = a @ p["W_V"][k] @ p["W_O"][k] if cfg.value else a
            z = z + alpha @ v
        if cfg.residual:
            z = z + h
        if cfg.mlp is not None:
            x = _layernorm(z, p["ln2_w"], p["ln2_b"]) if pre else z
            m = _activation(x @ p["W_in"] + p["b_in"], cfg.activation) @ p["W_out"] + p["b_out"]
            z = z + m if cfg.residual else m
        if pre:
            z = _layernorm(z, p["lnf_w"], p["lnf_b"])
        logits = z @ (p["W_E"].T if cfg.tied else p["W_U"])
        out.append(logits + (p["b_U"] if cfg.unembed_bias else 0.0))
    return np.stack(out)


def _perturbed(params, key, size=0.3):
    """Every weight moved off its initial value (gains 1 and biases 0 would hide their own mistakes)."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [x + size * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


CONFIGS = {
    "LN + MLP + GELU + residual": dict(layernorm="pre", mlp=6, activation="gelu", residual=True, value=True),
    "ReLU MLP without residual": dict(mlp=5, activation="relu"),
    "tied + unembedding bias": dict(tied=True, unembed_bias=True, residual=True),
    "learned positions, LN, MLP, tied": dict(positional="learned", layernorm="pre", mlp=4, tied=True, n_heads=2,
                                             value=True, residual=True, unembed_bias=True),
}


@pytest.mark.parametrize("fields", CONFIGS.values(), ids=CONFIGS.keys())
def test_forward_pass_equals_an_independent_numpy_implementation(fields, key):
    spec = gflow.MarkovSpec.sticky([0.4, 0.3, 0.2, 0.1], 0.3, T=6)
    cfg = gflow.TransformerConfig(d_model=5, d_head=3, **fields)
    params = _perturbed(gflow.init_params(key, cfg, spec, scale=0.7), jax.random.key(9))
    tokens = np.asarray(spec.sample(jax.random.key(2), 4))[:, :6]
    np.testing.assert_allclose(np.asarray(sequence_logits(params, jnp.asarray(tokens), cfg)),
                               numpy_logits(params, tokens, cfg), rtol=1e-10, atol=1e-12)


def test_initialisation_gains_one_biases_zero_and_only_the_parts_the_config_has(key):
    spec = gflow.MarkovSpec.sticky([0.5, 0.3, 0.2], 0.3, T=4)
    cfg = gflow.TransformerConfig(d_model=4, layernorm="pre", mlp=8, tied=True, unembed_bias=True)
    p = gflow.init_params(key, cfg, spec, scale=1e-3)
    for name in ("ln1_w", "ln2_w", "lnf_w"):
        assert np.array_equal(np.asarray(getattr(p, name)), np.ones(4)), name
    for name, size in (("ln1_b", 4), ("b_in", 8), ("b_out", 4), ("b_U", 3)):
        assert np.array_equal(np.asarray(getattr(p, name)), np.zeros(size)), name
    assert p.W_U is None and p.W_in.shape == (4, 8) and p.W_out.shape == (8, 4)
    assert 0 < float(jnp.std(p.W_in)) < 3e-3
    plain = gflow.init_params(key, gflow.TransformerConfig(d_model=4), spec, scale=1e-3)
    assert plain.ln1_w is None and plain.W_in is None and plain.b_U is None and plain.W_U is not None


@pytest.mark.parametrize("fields", [dict(layernorm="pre", mlp=6, residual=True, tied=True),
                                    dict(layernorm="pre", mlp=3, activation="relu", unembed_bias=True, value=True),
                                    dict(mlp=4, residual=True, tied=True, unembed_bias=True, n_heads=2)])
def test_counts_equals_enumerate_for_the_full_block(fields, key):
    """LayerNorm and the MLP act position by position after attention, so the output at a position
    is still a function of the query token and the context's counts (docs/model.md)."""
    spec = gflow.MarkovSpec.sticky([0.5, 0.3, 0.2], 0.4, T=5, positions="all")
    cfg = gflow.TransformerConfig(d_model=4, **fields)
    params = _perturbed(gflow.init_params(key, cfg, spec, scale=0.5), jax.random.key(4))
    counts = float(gflow.population_loss(params, spec, cfg, "counts"))
    assert counts == pytest.approx(float(gflow.population_loss(params, spec, cfg, "enumerate")), abs=1e-10)
    tokens = np.asarray(spec.sample(jax.random.key(3), 3))[:, :5]
    seq = np.asarray(sequence_logits(params, jnp.asarray(tokens), cfg))
    for b in range(3):
        for t in range(5):
            c = np.bincount(tokens[b, : t + 1], minlength=3).astype(np.float64)
            typed = type_logits(params, cfg, jnp.asarray([tokens[b, t]]), jnp.asarray(c[None]))
            np.testing.assert_allclose(np.asarray(typed[0]), seq[b, t], rtol=1e-11, atol=1e-12)


def test_the_loss_never_increases_along_a_flow_of_the_full_block(key):
    spec = gflow.MarkovSpec.sticky([0.6, 0.3, 0.1], 0.5, T=4)
    cfg = gflow.TransformerConfig(d_model=4, layernorm="pre", mlp=8, residual=True, tied=True, unembed_bias=True)
    traj = gflow.simulate(gflow.init_params(key, cfg, spec, scale=0.1), spec, (0.0, 200.0), config=cfg,
                          loss="counts", n_save=31, progress=False, solver="Tsit5", rtol=1e-8, atol=1e-11)
    assert traj.ok and np.all(np.diff(traj.loss) <= 1e-12)
    assert traj.loss[-1] < traj.loss[0] - 0.05


FULL_TOML = ('[chain]\nkind = "binary"\np = 0.3\nq = 0.6\nT = 4\n[model]\nd_model = 3\nlayernorm = "pre"\n'
             'mlp = 4\nactivation = "relu"\ntied = true\nunembed_bias = true\nresidual = true\n'
             '[flow]\nt_end = 5.0\nn_save = 5\nloss = "counts"\n')


def test_files_and_settings_round_trip_the_full_block(tmp_path, key):
    spec = gflow.MarkovSpec.binary(0.3, 0.6, T=4)
    cfg = gflow.TransformerConfig(d_model=3, layernorm="pre", mlp=4, activation="relu", tied=True,
                                  unembed_bias=True, positional="learned", residual=True)
    traj = gflow.simulate(gflow.init_params(key, cfg, spec, scale=0.1), spec, (0.0, 5.0), config=cfg,
                          loss="enumerate", n_save=5, progress=False, solver="Tsit5")
    traj.save(tmp_path / "run.npz")
    back = gflow.load(tmp_path / "run.npz")
    assert back.config == cfg
    np.testing.assert_array_equal(back.flat_params(), traj.flat_params())
    toml = tmp_path / "full.toml"
    toml.write_text(FULL_TOML)
    settings = gflow.ExperimentSettings.from_toml(str(toml))
    assert settings.record.config == gflow.TransformerConfig(d_model=3, layernorm="pre", mlp=4, activation="relu",
                                                             tied=True, unembed_bias=True, residual=True)
    assert gflow.ExperimentSettings.from_dict(settings.to_dict()).record.config == settings.record.config


@pytest.mark.slow
def test_gflow_run_runs_the_full_block(tmp_path):
    toml = tmp_path / "full.toml"
    toml.write_text(FULL_TOML)
    assert main(["run", str(toml), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert gflow.load(tmp_path / "out" / "trajectory.npz").config.tied


@pytest.mark.parametrize(("fields", "match"), [
    (dict(layernorm="post"), "`layernorm` must be"), (dict(activation="tanh"), "`activation` must be"),
    (dict(mlp=0), "`mlp` must be"), (dict(mlp=2.5), "mlp"), (dict(mlp=True), "`mlp` must be"),
    (dict(tied=1), "tied"), (dict(unembed_bias="yes"), "unembed_bias"),
])
def test_bad_fields_are_named(fields, match):
    """(A value of the wrong type may be caught first by the suite's jaxtyping hook; it names the field too.)"""
    with pytest.raises(BAD_TYPE, match=match):
        gflow.TransformerConfig(**fields)


def test_weights_that_disagree_with_the_config_are_named(key):
    spec = gflow.MarkovSpec.sticky([0.5, 0.5], 0.2, T=3)
    untied = gflow.init_params(key, gflow.TransformerConfig(d_model=2), spec)
    with pytest.raises(ValueError, match="W_U.*tied"):
        gflow.population_loss(untied, spec, gflow.TransformerConfig(d_model=2, tied=True), "counts")
    with pytest.raises(ValueError, match="W_in"):
        gflow.population_loss(untied, spec, gflow.TransformerConfig(d_model=2, mlp=3), "counts")
    with_mlp = gflow.init_params(key, gflow.TransformerConfig(d_model=2, mlp=3), spec)
    with pytest.raises(ValueError, match="W_in.*shape"):
        gflow.population_loss(with_mlp, spec, gflow.TransformerConfig(d_model=2, mlp=4), "counts")


def test_a_file_with_an_unknown_model_field_is_refused_by_name(tmp_path, key):
    import json
    import zipfile

    spec = gflow.MarkovSpec.sticky([0.5, 0.5], 0.2, T=3)
    traj = gflow.simulate(gflow.init_params(key, gflow.TransformerConfig(d_model=2), spec), spec, (0.0, 1.0),
                          config=gflow.TransformerConfig(d_model=2), loss="counts", n_save=3, progress=False)
    path = tmp_path / "run.npz"
    traj.save(path)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays["meta"]))
    meta["record"]["config"]["rotary"] = True
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    assert zipfile.is_zipfile(path)
    with pytest.raises(ValueError, match="rotary"):
        gflow.load(path)
    toml = tmp_path / "bad.toml"
    toml.write_text("[model]\nmlp = 0\n")
    assert main(["run", str(toml), "--out", str(tmp_path / "o")]) == 2


@pytest.mark.parametrize("name", ["full_block.toml", "markov_binary.toml"])
def test_the_example_settings_files_build_the_block_they_describe(name):
    import os

    settings = gflow.ExperimentSettings.from_toml(os.path.join(os.path.dirname(__file__), "..", "examples", name))
    cfg = settings.record.config
    assert cfg.layernorm == "pre" and cfg.mlp is not None and cfg.activation == "gelu" and cfg.residual
    if name == "markov_binary.toml":
        assert cfg.tied and cfg.unembed_bias and settings.record.source.V == 2
        assert settings.record.loss.method == "enumerate"
