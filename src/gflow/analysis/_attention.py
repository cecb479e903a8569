"""Attention statistics under the loss a run actually used.

The focus index and the key masses are expectations over the contexts the loss scores, so they are
computed from the loss's own precomputed data:

- type-level losses (`meanfield`, `counts`): each state is a query token with key-type weights $w$
  (the stationary law $\\pi$ in the mean-field limit, the context's counts at finite $T$); attention is
  $\\alpha_b \\propto w_b e^{score(a, b)}$ and the reference is uniform attention over the context,
  $w / \\sum w$;
- sequence losses (`enumerate`, `sampled`, `dataset`): each scored position $t$ of each sequence
  attends over positions $s \\le t$; the reference is uniform attention over them, and key masses
  add up the attention that lands on each token type. The position-by-position map is kept too.

In the mean-field limit this reduces to the paper's formulas: $m_b = \\sum_a \\pi_a \\alpha(a, b)$ and
$F = \\sum_a \\pi_a KL(\\alpha(a, \\cdot) \\| \\pi)$.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..common import stored_filter_jit
from ..losses import LossFunction, SequenceData, TypeData
from ..model import TransformerParams, sequence_attention, type_attention


def _xlogy_ratio(p, q):
    """$p \\log(p / q)$, with $0 \\log 0 = 0$."""
    safe = jnp.where(p > 0, p, 1.0)
    return jnp.where(p > 0, p * (jnp.log(safe) - jnp.log(jnp.where(q > 0, q, 1.0))), 0.0)


def _type_level(params: TransformerParams, fn: LossFunction, d: TypeData) -> dict[str, Float[Array, ...]]:
    V = d.targets.shape[-1]
    alpha = type_attention(params, fn.config, d.query, d.key_weights)  # (K, S, V): the model's own attention
    w = d.weights / jnp.sum(d.weights)
    reference = d.key_weights / jnp.sum(d.key_weights, axis=-1, keepdims=True)
    focus = jnp.sum(_xlogy_ratio(alpha, reference[None]), axis=-1) @ w  # (K,)
    query = jax.nn.one_hot(d.query, V, dtype=alpha.dtype)  # (S, V)
    per_query = jnp.einsum("s,sa,ksb->kab", w, query, alpha) / jnp.maximum(w @ query, 1e-300)[None, :, None]
    return {"key_mass": jnp.einsum("s,ksv->kv", w, alpha), "uniform_mass": w @ reference, "focus": focus,
            "attention": per_query}


def _sequence_level(params: TransformerParams, fn: LossFunction, d: SequenceData) -> dict[str, Float[Array, ...]]:
    V = d.targets.shape[-1]
    T = d.tokens.shape[-1]
    alpha = sequence_attention(params, d.tokens, fn.config)  # (N, K, T, T)
    w = d.weights / jnp.sum(d.weights)
    rho = d.position_weights
    causal = jnp.tril(jnp.ones((T, T), alpha.dtype))
    uniform = causal / jnp.sum(causal, axis=-1, keepdims=True)
    focus = jnp.einsum("n,t,nkt->k", w, rho, jnp.sum(_xlogy_ratio(alpha, uniform[None, None]), axis=-1))
    onehot = jax.nn.one_hot(d.tokens, V, dtype=alpha.dtype)  # (N, T, V)
    query_weight = jnp.einsum("n,t,nta->a", w, rho, onehot)
    per_query = jnp.einsum("n,t,nta,nkts,nsb->kab", w, rho, onehot, alpha, onehot)
    return {"key_mass": jnp.einsum("n,t,nkts,nsv->kv", w, rho, alpha, onehot),
            "uniform_mass": jnp.einsum("n,t,ts,nsv->v", w, rho, uniform, onehot), "focus": focus,
            "attention": per_query / jnp.maximum(query_weight, 1e-300)[None, :, None],
            "position_attention": jnp.einsum("n,nkts->kts", w, alpha)}


@stored_filter_jit
def attention_statistics(params: TransformerParams, fn: LossFunction) -> dict[str, Float[Array, ...]]:
    """For parameters stacked over `n` saved times: `key_mass` `(n, K, V)`, `uniform_mass` `(n, V)` (the
    masses uniform attention would give: the reference for gains), `focus` `(n, K)`, `attention`
    `(n, K, V, V)` (the attention a query token pays each key type, averaged over the contexts the
    loss scores), and for sequence losses `position_attention` `(n, K, T, T)`."""
    d = fn.data
    if isinstance(d, TypeData):
        return jax.lax.map(lambda p: _type_level(p, fn, d), params)
    return jax.lax.map(lambda p: _sequence_level(p, fn, d), params)
