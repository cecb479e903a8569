"""The one-layer Transformer: its configuration, parameters, initialisation and forward passes.

Names and shapes follow TransformerLens (`W_E`, `W_pos`, `W_Q`, `W_K`, `W_V`, `W_O`, `W_U`).
Two forward passes share the same maths:

- `sequence_logits`: on token sequences, with causal attention (the query attends to itself too);
  works for every configuration.
- `type_logits`: for configurations without positional encoding, where the output at a position
  depends only on the query token and on how many times each token type occurs in the context.
  Attention is then over token *types* weighted by those counts (or, in the mean-field limit, by
  the stationary law).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray, Real

from ._checks import as_prng_key, is_real
from .data import AbstractDataSource


class TransformerConfig(eqx.Module):
    """Architecture of the one-layer Transformer.

    The default is the attention-only model of the focus–dilution setting (Chen et al., ICML 2026):
    one head, no value path (`v_s = h_s`), no residual stream, no positional encoding.

    **Fields:**

    - `n_heads`, `d_model`, `d_head` (`None`: equal to `d_model`).
    - `value`: with a value path `v_s = h_s W_V[k] W_O[k]`; without, `v_s = h_s`.
    - `residual`: add the token's own embedding to the attention output, `z_t = sum_k u_t + h_t`.
    - `positional`: `"none"` or `"learned"` (a `W_pos` of shape `(T, d_model)`).
    - `attn_scale`: the factor `c` in `score = c (h_t W_Q) . (h_s W_K)`; `None` means `1/sqrt(d_head)`.
    """

    n_heads: int = eqx.field(static=True, default=1)
    d_model: int = eqx.field(static=True, default=8)
    d_head: int | None = eqx.field(static=True, default=None)
    value: bool = eqx.field(static=True, default=False)
    residual: bool = eqx.field(static=True, default=False)
    positional: str = eqx.field(static=True, default="none")
    attn_scale: float | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        for name in ("n_heads", "d_model"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"`{name}` must be an integer >= 1; got {v!r}.")
        if self.d_head is not None and (
            isinstance(self.d_head, bool) or not isinstance(self.d_head, (int, np.integer)) or self.d_head < 1
        ):
            raise ValueError(f"`d_head` must be an integer >= 1 or None (= d_model); got {self.d_head!r}.")
        for name in ("value", "residual"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be True or False; got {getattr(self, name)!r}.")
        if self.positional not in ("none", "learned"):
            raise ValueError(f"`positional` must be 'none' or 'learned'; got {self.positional!r}.")
        if self.attn_scale is not None and not (
            isinstance(self.attn_scale, (int, float)) and math.isfinite(self.attn_scale) and self.attn_scale > 0
        ):
            raise ValueError(f"`attn_scale` must be a finite number > 0, or None for 1/sqrt(d_head); "
                             f"got {self.attn_scale!r}.")

    @property
    def head_dim(self) -> int:
        return self.d_model if self.d_head is None else int(self.d_head)

    @property
    def score_scale(self) -> float:
        return 1.0 / math.sqrt(self.head_dim) if self.attn_scale is None else float(self.attn_scale)

    def to_dict(self) -> dict:
        return {"n_heads": self.n_heads, "d_model": self.d_model, "d_head": self.d_head, "value": self.value,
                "residual": self.residual, "positional": self.positional, "attn_scale": self.attn_scale}


class TransformerParams(eqx.Module):
    """The trainable weights. `W_pos`, `W_V`, `W_O` are `None` when the config has no such path.

    A `Trajectory` stores the weights at every saved time in one `TransformerParams` whose arrays
    carry a leading time axis (`*batch`).
    """

    W_E: Float[Array, "*batch V d_model"]
    W_Q: Float[Array, "*batch n_heads d_model d_head"]
    W_K: Float[Array, "*batch n_heads d_model d_head"]
    W_U: Float[Array, "*batch d_model V"]
    W_pos: Float[Array, "*batch T d_model"] | None = None
    W_V: Float[Array, "*batch n_heads d_model d_head"] | None = None
    W_O: Float[Array, "*batch n_heads d_head d_model"] | None = None


PARAM_NAMES = ("W_E", "W_Q", "W_K", "W_U", "W_pos", "W_V", "W_O")


def param_shapes(config: TransformerConfig, spec: AbstractDataSource) -> dict[str, tuple[int, ...]]:
    """The shape of every weight the config uses (missing names are `None` in the params)."""
    V, d, K, e = spec.V, config.d_model, config.n_heads, config.head_dim
    shapes = {"W_E": (V, d), "W_Q": (K, d, e), "W_K": (K, d, e), "W_U": (d, V)}
    if config.positional == "learned":
        shapes["W_pos"] = (spec.context_length, d)
    if config.value:
        shapes["W_V"] = (K, d, e)
        shapes["W_O"] = (K, e, d)
    return shapes


def _fan_in(name: str, config: TransformerConfig, V: int) -> int:
    # W_E is indexed by a one-hot token (fan-in V); W_O maps from the head space; the rest from d_model.
    return {"W_E": V, "W_O": config.head_dim}.get(name, config.d_model)


def init_params(key: PRNGKeyArray | int, config: TransformerConfig, spec: AbstractDataSource, *,
                scale: float | Real[Array | np.ndarray | np.number, ""] | None = None,
                gamma: float | Real[Array | np.ndarray | np.number, ""] | None = None) -> TransformerParams:
    """Gaussian initialisation, float64.

    Every entry is $N(0, \\sigma^2)$ with $\\sigma$ = `scale`, or $\\sigma = \\text{fan\\_in}^{-\\gamma}$
    (fan-in `V` for `W_E`, `d_head` for `W_O`, `d_model` otherwise). Small initialisation is
    `gamma > 0.5` (or a small `scale`); the condensation regime of the focus–dilution paper needs it.
    With neither given, `gamma = 0.5` (the usual $1/\\sqrt{\\text{fan\\_in}}$). `key` is a PRNG key or
    an integer seed.
    """
    key = as_prng_key("key", key)
    if scale is not None and gamma is not None:
        raise ValueError("give either `scale` (the standard deviation) or `gamma` (sigma = fan_in**-gamma), not both.")
    if scale is not None and not (is_real(scale) and math.isfinite(float(scale)) and float(scale) > 0):
        raise ValueError(f"`scale` must be a finite number > 0; got {scale!r}.")
    if gamma is not None and not (is_real(gamma) and math.isfinite(float(gamma))):
        raise ValueError(f"`gamma` must be a finite number; got {gamma!r}.")
    scale = None if scale is None else float(scale)
    gamma = None if gamma is None else float(gamma)
    if gamma is None and scale is None:
        gamma = 0.5
    shapes = param_shapes(config, spec)
    keys = dict(zip(shapes, jax.random.split(key, len(shapes)), strict=True))
    weights = {}
    for name, shape in shapes.items():
        sigma = scale if scale is not None else _fan_in(name, config, spec.V) ** (-gamma)
        weights[name] = sigma * jax.random.normal(keys[name], shape, dtype=jnp.float64)
    return TransformerParams(**weights)


def check_params(params: TransformerParams, config: TransformerConfig, spec: AbstractDataSource) -> None:
    """Raise `ValueError` if `params` do not have the shapes `config` and `spec` call for."""
    if not isinstance(params, TransformerParams):
        raise ValueError(f"`params` must be a gflow.TransformerParams (see gflow.init_params); got {type(params)!r}.")
    shapes = param_shapes(config, spec)
    for name in PARAM_NAMES:
        w = getattr(params, name)
        want = shapes.get(name)
        if want is None and w is not None:
            raise ValueError(f"`params.{name}` is set but the config has no such path; set it to None or change "
                             f"the config (value={config.value}, positional={config.positional!r}).")
        if want is not None:
            if w is None:
                raise ValueError(f"`params.{name}` is None but the config needs shape {want}.")
            if tuple(jnp.shape(w)) != want:
                raise ValueError(f"`params.{name}` has shape {tuple(jnp.shape(w))}; the config and spec need {want} "
                                 "(V from the spec, d_model/d_head/n_heads from the config).")


# -------------------------------------------------------------------------------------------------
# forward passes


def _values(params: TransformerParams, h: Float[Array, "*batch d_model"], config: TransformerConfig):
    """Per-head value vectors in model space, shape `(n_heads, *batch, d_model)`."""
    if config.value:
        return jnp.einsum("...d,kde,kef->k...f", h, params.W_V, params.W_O)
    return jnp.broadcast_to(h, (config.n_heads, *h.shape))


def _embed(params: TransformerParams, tokens: Int[Array, "batch T"], config: TransformerConfig):
    h = params.W_E[tokens]
    if config.positional == "learned":
        h = h + params.W_pos[: tokens.shape[-1]]
    return h


def sequence_attention(params: TransformerParams, tokens: Int[Array, "batch T"],
                       config: TransformerConfig) -> Float[Array, "batch n_heads T T"]:
    """Causal attention weights `alpha[b, k, t, s]` (query t, key s <= t; the query sees itself)."""
    h = _embed(params, tokens, config)
    T = tokens.shape[-1]
    q = jnp.einsum("btd,kde->bkte", h, params.W_Q)
    k = jnp.einsum("btd,kde->bkte", h, params.W_K)
    scores = config.score_scale * jnp.einsum("bkte,bkse->bkts", q, k)
    causal = jnp.tril(jnp.ones((T, T), dtype=bool))
    return jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)


def sequence_logits(params: TransformerParams, tokens: Int[Array, "batch T"],
                    config: TransformerConfig) -> Float[Array, "batch T V"]:
    """Logits for predicting $x_{t+1}$ at every position $t$ of each sequence (causal attention)."""
    h = _embed(params, tokens, config)
    alpha = sequence_attention(params, tokens, config)
    v = _values(params, h, config)  # (k, b, s, d)
    z = jnp.einsum("bkts,kbsd->btd", alpha, v)
    if config.residual:
        z = z + h
    return z @ params.W_U


def type_scores(params: TransformerParams, config: TransformerConfig) -> Float[Array, "n_heads V V"]:
    """Attention scores between token types, `score[k, a, b] = c (W_E[a] W_Q[k]) . (W_E[b] W_K[k])`."""
    q = jnp.einsum("ad,kde->kae", params.W_E, params.W_Q)
    k = jnp.einsum("ad,kde->kae", params.W_E, params.W_K)
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
    v = _values(params, params.W_E, config)  # (k, V, d)
    z = jnp.einsum("ksb,kbd->sd", alpha, v)
    if config.residual:
        z = z + params.W_E[query]
    return z @ params.W_U
