"""The forward pass, one pipeline for both formulations: embed → attention block → readout.

- **Sequence formulation** (`sequence_logits`): on token sequences, with causal attention (the
  query attends to itself too); works for every configuration.
- **Type formulation** (`type_logits`): for configurations without positional encoding, where the
  output at a position depends only on the query token and on how many times each token type occurs
  in the context. Attention is then over token *types* weighted by those counts (or, in the
  mean-field limit, by the stationary law).

The two differ only in what the keys are (positions under a causal mask, or token types with
log-count weights), so only the mixing of values is written twice; the embedding, the attention
input, the scores, the values and everything after attention (`readout`) are shared. Analyses
compute attention through these same functions (`sequence_attention`, `type_attention`,
`type_scores`), so whatever changes the scores changes them too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ._config import TransformerConfig
from ._params import TransformerParams


def embed(params: TransformerParams, tokens: Int[Array, "batch T"], config: TransformerConfig
          ) -> Float[Array, "batch T d_model"]:
    """The residual stream before attention: token embeddings, plus learned positions."""
    h = params.W_E[tokens]
    if config.positional == "learned":
        h = h + params.W_pos[: tokens.shape[-1]]
    return h


LAYERNORM_EPS = 1e-5
"""PyTorch's default `eps` of `nn.LayerNorm`."""


def layernorm(x: Float[Array, "*batch d_model"], w: Float[Array, " d_model"], b: Float[Array, " d_model"]
              ) -> Float[Array, "*batch d_model"]:
    """$(x - \\bar x) / \\sqrt{\\mathrm{var}(x) + \\epsilon} \\cdot w + b$ over `d_model`, with the biased
    variance (PyTorch's `nn.LayerNorm`)."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + LAYERNORM_EPS) * w + b


def attention_input(params: TransformerParams, h: Float[Array, "*batch d_model"],
                    config: TransformerConfig) -> Float[Array, "*batch d_model"]:
    """What the attention block reads from the residual stream: `LN1(h)` with `layernorm="pre"`,
    else the stream itself."""
    return layernorm(h, params.ln1_w, params.ln1_b) if config.layernorm == "pre" else h


def _activation(x, config: TransformerConfig):
    return jax.nn.gelu(x, approximate=False) if config.activation == "gelu" else jax.nn.relu(x)


def mlp(params: TransformerParams, z: Float[Array, "*batch d_model"], config: TransformerConfig
        ) -> Float[Array, "*batch d_model"]:
    """The MLP's output `act(LN2(z) W_in + b_in) W_out + b_out` (LN2 with `layernorm="pre"`)."""
    x = layernorm(z, params.ln2_w, params.ln2_b) if config.layernorm == "pre" else z
    return _activation(x @ params.W_in + params.b_in, config) @ params.W_out + params.b_out


def values(params: TransformerParams, a: Float[Array, "*batch d_model"],
           config: TransformerConfig, layer: int = 1) -> Float[Array, "n_heads *batch d_model"]:
    """Per-head value vectors in model space: `a W_V[k] W_O[k]` with a value path, else `a` itself."""
    if config.value:
        _, _, W_V, W_O = _layer(params, layer)
        return jnp.einsum("...d,kde,kef->k...f", a, W_V, W_O)
    return jnp.broadcast_to(a, (config.n_heads, *a.shape))


def mix_values(params: TransformerParams, alpha: Float[Array, "*batch n_heads T S"],
               a: Float[Array, "*batch S d_model"], config: TransformerConfig,
               layer: int = 1) -> Float[Array, "*batch T d_model"]:
    """The attention output $\\sum_k \\sum_s \\alpha_{k,ts} v_{k,s}$ of every head, summed, from the
    attention input `a` of the keys (positions or types). Without a value path every head reads `a`
    itself, so the heads' weights are summed first: one product instead of one per head (problem F of
    docs/performance.md: a gradient 10% cheaper)."""
    if config.value:
        return jnp.einsum("...kts,k...sd->...td", alpha, values(params, a, config, layer))
    return jnp.sum(alpha, axis=-3) @ a


def unembedding(params: TransformerParams, config: TransformerConfig) -> Float[Array, "*batch d_model V"]:
    """The matrix the readout multiplies by: `W_U`, or `W_E`ᵀ when tied (params stacked over times keep
    their leading axes). Analyses read it here, so they see what the model uses."""
    return jnp.swapaxes(params.W_E, -1, -2) if config.tied else params.W_U


def readout(params: TransformerParams, attended: Float[Array, "*batch d_model"],
            h: Float[Array, "*batch d_model"], config: TransformerConfig) -> Float[Array, "*batch V"]:
    """Everything after attention, position by position: the residual stream (`h`, the query's own
    embedding) added back when the config has one; the MLP (added to its input with a residual
    stream, replacing it without); the final LayerNorm; the unembedding and its bias.

    Nothing here mixes positions, which is why the type formulation holds for the full block."""
    return stream_readout(params, attended + h if config.residual else attended, config)


def stream_readout(params: TransformerParams, z: Float[Array, "*batch d_model"], config: TransformerConfig
                   ) -> Float[Array, "*batch V"]:
    """`readout` from the residual stream after the last attention layer (its residual added)."""
    if config.mlp is not None:
        m = mlp(params, z, config)
        z = z + m if config.residual else m
    if config.layernorm == "pre":
        z = layernorm(z, params.lnf_w, params.lnf_b)
    logits = z @ unembedding(params, config)
    return logits + params.b_U if config.unembed_bias else logits


# -------------------------------------------------------------------------------------------------
# keys are positions: causal attention over a sequence


def _layer(params: TransformerParams, layer: int):
    """The attention weights of layer 1 or 2: `(W_Q, W_K, W_V, W_O)`."""
    if layer == 1:
        return params.W_Q, params.W_K, params.W_V, params.W_O
    return params.W_Q2, params.W_K2, params.W_V2, params.W_O2


def sequence_attention(params: TransformerParams, tokens: Int[Array, "batch T"],
                       config: TransformerConfig) -> Float[Array, "batch n_heads T T"]:
    """Causal attention weights `alpha[b, k, t, s]` of the first layer (query t, key s <= t; the
    query sees itself)."""
    return _causal_weights(params, attention_input(params, embed(params, tokens, config), config), config)


def sequence_attention_layers(params: TransformerParams, tokens: Int[Array, "batch T"],
                              config: TransformerConfig) -> tuple[Float[Array, "batch n_heads T T"], ...]:
    """The causal attention weights of every layer, first layer first (what the induction-head
    probes read: a second layer attends from the stream the first one wrote)."""
    h = embed(params, tokens, config)
    a = attention_input(params, h, config)
    alpha = _causal_weights(params, a, config)
    if config.n_layers == 1:
        return (alpha,)
    z = mix_values(params, alpha, a, config) + h
    return alpha, _causal_weights(params, z, config, layer=2)


def _causal_weights(params: TransformerParams, a: Float[Array, "batch T d_model"], config: TransformerConfig,
                    layer: int = 1):
    W_Q, W_K, _, _ = _layer(params, layer)
    T = a.shape[-2]
    q = jnp.einsum("btd,kde->bkte", a, W_Q)
    k = jnp.einsum("btd,kde->bkte", a, W_K)
    scores = config.score_scale * jnp.einsum("bkte,bkse->bkts", q, k)
    causal = jnp.tril(jnp.ones((T, T), dtype=bool))
    return jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)


def sequence_logits(params: TransformerParams, tokens: Int[Array, "batch T"],
                    config: TransformerConfig) -> Float[Array, "batch T V"]:
    """Logits for predicting $x_{t+1}$ at every position $t$ of each sequence (causal attention; with
    two layers, the second attends from the stream the first wrote)."""
    h = embed(params, tokens, config)
    a = attention_input(params, h, config)
    alpha = _causal_weights(params, a, config)
    attended = mix_values(params, alpha, a, config)
    if config.n_layers == 1:
        return readout(params, attended, h, config)
    z = attended + h  # two layers always have the residual stream
    alpha2 = _causal_weights(params, z, config, layer=2)
    z = z + mix_values(params, alpha2, z, config, layer=2)
    return stream_readout(params, z, config)


# -------------------------------------------------------------------------------------------------
# keys are token types, weighted by their counts in the context (or the stationary law)


def type_scores(params: TransformerParams, config: TransformerConfig) -> Float[Array, "n_heads V V"]:
    """Attention scores between token types, `score[k, a, b] = c (x_a W_Q[k]) . (x_b W_K[k])` with
    `x` the attention input of each type's embedding."""
    x = attention_input(params, params.W_E, config)
    q = jnp.einsum("ad,kde->kae", x, params.W_Q)
    k = jnp.einsum("ad,kde->kae", x, params.W_K)
    return config.score_scale * jnp.einsum("kae,kbe->kab", q, k)


def type_attention(params: TransformerParams, config: TransformerConfig, query: Int[Array, " S"],
                   key_weights: Float[Array, "S V"]) -> Float[Array, "n_heads S V"]:
    """Attention of a query token over key *types*: $\\alpha_b \\propto w_b e^{score(a, b)}$.

    `key_weights[i, b]` is how much of key type `b` state `i` sees: its count in the context (exact
    counts loss) or the stationary probability $\\pi_b$ (mean-field limit). Types with zero weight
    get exactly zero attention.
    """
    scores = type_scores(params, config)[:, query, :]  # (k, S, V)
    logw = jnp.where(key_weights > 0, jnp.log(jnp.where(key_weights > 0, key_weights, 1.0)), -jnp.inf)
    return jax.nn.softmax(scores + logw[None], axis=-1)


def type_logits(params: TransformerParams, config: TransformerConfig, query: Int[Array, " S"],
                key_weights: Float[Array, "S V"]) -> Float[Array, "S V"]:
    """Logits at a position whose token is `query` and whose context holds key types in
    proportions `key_weights` (valid only without positional encoding)."""
    alpha = type_attention(params, config, query, key_weights)  # (k, S, V)
    h = params.W_E  # the residual stream of each token type
    attended = mix_values(params, alpha, attention_input(params, h, config), config)
    return readout(params, attended, h[query], config)
