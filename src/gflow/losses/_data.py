"""What each loss method precomputes from the data, once per source.

None of this depends on the parameters, so it is built in numpy before any tracing and handed to
the jitted loss as a pytree of arrays. There are two kinds:

- `SequenceData`: explicit token sequences with probabilities and next-token targets. Used by
  `"enumerate"` (every context, exact targets: the source's `sequence_law`), `"sampled"` (a fixed
  sample, one-hot targets: an empirical risk) and `"dataset"` (the user's own sequences).
- `TypeData`: states (query token, key-type weights) with probabilities and targets. Used by
  `"counts"` (exact: the law of the query token and the context's count vector) and `"meanfield"`
  (the $T \\to \\infty$ limit, key weights $\\pi$). Both need a first-order chain.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ..data import AbstractDataSource, MarkovSpec

MAX_ENUMERATED_SEQUENCES = 2**16
"""`"enumerate"` refuses sources with more than this many contexts: the forward pass holds a
(contexts x T x T) score tensor, about 0.5 GB in float64 at this size with T = 16."""

MAX_COUNT_STATES = 400_000
"""`"counts"` refuses when its number of (query token, count vector) states, summed over the scored
positions, exceeds this: each loss evaluation costs about (states x V x d_model) flops, and the
states are built by a Python-level recursion that takes about a second per 10^5 states."""


class SequenceData(eqx.Module):
    """Weighted token sequences: the loss is $\\sum_i w_i \\sum_t \\rho_t \\, CE(target_{i,t}, logits_{i,t})$."""

    tokens: Int[Array, "N T"]
    weights: Float[Array, " N"]
    targets: Float[Array, "N T V"]
    position_weights: Float[Array, " T"]


class TypeData(eqx.Module):
    """Weighted type-level states: the loss is $\\sum_i w_i \\, CE(target_i, logits(query_i, keys_i))$."""

    query: Int[Array, " S"]
    key_weights: Float[Array, "S V"]
    weights: Float[Array, " S"]
    targets: Float[Array, "S V"]


def enumerate_data(source: AbstractDataSource) -> SequenceData:
    """Every context with its probability; targets are the exact next-token laws."""
    tokens, prob, targets = source.sequence_law(MAX_ENUMERATED_SEQUENCES)
    return SequenceData(tokens=jnp.asarray(tokens), weights=jnp.asarray(prob), targets=jnp.asarray(targets),
                        position_weights=jnp.asarray(source.position_weights()))


def dataset_data(source: AbstractDataSource, sequences: Int[Array | np.ndarray, "N T_plus_1"]) -> SequenceData:
    """The empirical risk on fixed sequences $x_1..x_{T+1}$ (each weighted 1/N; one-hot targets)."""
    sequences = jnp.asarray(sequences)
    n = sequences.shape[0]
    targets = jax.nn.one_hot(sequences[:, 1:], source.V, dtype=jnp.float64)
    return SequenceData(tokens=sequences[:, :-1], weights=jnp.full((n,), 1.0 / n), targets=targets,
                        position_weights=jnp.asarray(source.position_weights()))


def sampled_data(source: AbstractDataSource, n_samples: int, key: PRNGKeyArray) -> SequenceData:
    """A fixed sample of `n_samples` sequences drawn with `key`: the empirical risk on it."""
    return dataset_data(source, source.sample(key, n_samples))


def count_state_bound(V: int, T: int, positions: str) -> int:
    """Upper bound on the number of (query token, count vector) states the counts method visits:
    at position t the query token has count >= 1 and the other t-1 tokens are spread over V types."""
    if positions == "last":
        return V * math.comb(T - 1 + V - 1, V - 1)
    return V * math.comb(T + V - 1, V)  # the sum over t = 1..T of the above (hockey-stick identity)


MAX_LOSS_BYTES = 2 * 2**30
"""Memory budget of one evaluation of a sequence-level loss (forward and backward), used by
`"auto"` to size its sampled fallback. 2 GiB: a tenth of a small workstation."""


def sequence_loss_bytes(n_sequences: int, T: int, V: int, config) -> int:
    """Estimated peak bytes of a forward and backward pass over `n_sequences` contexts of length T:
    the (heads x T x T) attention scores and weights, the (T x V) logits and targets, the stream and
    the MLP's hidden pre- and post-activations (T x mlp each), each kept for the backward pass (about
    four float64 copies)."""
    per_sequence = T * (config.n_heads * T + 2 * V + config.d_model + 2 * (config.mlp or 0))
    return 4 * 8 * n_sequences * per_sequence


def _merge_equal_states(keys: np.ndarray, prob: np.ndarray):
    """Sum `prob` over equal rows of the int matrix `keys` (token, counts...). Sorting the rows
    with `lexsort` is much faster than `np.unique(axis=0)`, which argsorts opaque byte strings."""
    order = np.lexsort(keys.T[::-1])
    keys, prob = keys[order], prob[order]
    starts = np.concatenate([[True], np.any(keys[1:] != keys[:-1], axis=1)])
    group = np.cumsum(starts) - 1
    merged = np.bincount(group, weights=prob)
    uniq = keys[starts]
    return uniq[:, 0], uniq[:, 1:], merged


def counts_data(spec: MarkovSpec) -> TypeData:
    """Exact law of (x_t, counts of x_1..x_t) by forward recursion over the chain.

    Without positional encoding the model's output at position t is a function of the query token
    $x_t$ and of the count vector $n_t$ (attention weights $\\propto n_{t,b} e^{score(x_t, b)}$), and
    $(x_t, n_t)$ is itself a Markov chain: $(a, n) \\to (b, n + e_b)$ with probability $P_{ab}$.
    """
    V, T = spec.V, spec.T
    P, init = np.asarray(spec.P), np.asarray(spec.init)
    rho = spec.position_weights()
    tok = np.arange(V)
    counts = np.eye(V, dtype=np.int64)
    prob = init.copy()
    kept_q, kept_n, kept_w = [], [], []
    for t in range(T):
        if rho[t] > 0:
            live = prob > 0
            kept_q.append(tok[live])
            kept_n.append(counts[live])
            kept_w.append(rho[t] * prob[live])
        if t == T - 1:
            break
        # Every state moves to each next token b; then states that coincide are merged.
        new_tok = np.repeat(np.arange(V)[None, :], tok.size, axis=0).ravel()
        new_counts = (counts[:, None, :] + np.eye(V, dtype=np.int64)[None]).reshape(-1, V)
        new_prob = (prob[:, None] * P[tok]).ravel()
        live = new_prob > 0
        keys = np.concatenate([new_tok[live, None], new_counts[live]], axis=1)
        tok, counts, prob = _merge_equal_states(keys, new_prob[live])
    query = np.concatenate(kept_q)
    return TypeData(query=jnp.asarray(query.astype(np.int32)),
                    key_weights=jnp.asarray(np.concatenate(kept_n).astype(np.float64)),
                    weights=jnp.asarray(np.concatenate(kept_w)), targets=jnp.asarray(P[query]))


def meanfield_data(spec: MarkovSpec) -> TypeData:
    """The $T \\to \\infty$ limit: every query token $a \\sim \\pi$ sees key types in proportions $\\pi$."""
    V = spec.V
    pi = spec.stationary()
    return TypeData(query=jnp.arange(V, dtype=jnp.int32), key_weights=jnp.asarray(np.tile(pi, (V, 1))),
                    weights=jnp.asarray(pi), targets=spec.P)
