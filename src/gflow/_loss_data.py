"""What each population-loss method needs from the chain, computed once per spec.

None of this depends on the parameters, so it is built in numpy before any tracing and handed to
the jitted loss as a pytree of arrays. There are two kinds:

- `SequenceData`: explicit token sequences with probabilities and next-token targets. Used by
  `"enumerate"` (all $V^T$ sequences, exact targets $P(x_t, \\cdot)$) and `"sampled"` (a fixed
  sample, one-hot targets: an empirical risk).
- `TypeData`: states (query token, key-type weights) with probabilities and targets. Used by
  `"counts"` (exact: the law of the query token and the context's count vector) and `"meanfield"`
  (the $T \\to \\infty$ limit, key weights $\\pi$).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ._markov import MarkovSpec

MAX_ENUMERATED_SEQUENCES = 2**16
"""`"enumerate"` refuses chains with more than this many length-T sequences ($V^T$): the forward pass
holds a (sequences x T x T) score tensor, about 0.5 GB in float64 at this size with T = 16."""

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


def _position_weights(spec: MarkovSpec) -> np.ndarray:
    rho = np.zeros(spec.T)
    if spec.positions == "last":
        rho[-1] = 1.0
    else:
        rho[:] = 1.0 / spec.T
    return rho


def enumerate_data(spec: MarkovSpec) -> SequenceData:
    """All $V^T$ sequences $x_1..x_T$ with their probabilities; targets are the exact next-token
    laws $P(x_t, \\cdot)$, so the expectation over $x_{T+1}$ is taken in closed form."""
    V, T = spec.V, spec.T
    n = V**T
    if n > MAX_ENUMERATED_SEQUENCES:
        raise ValueError(
            f"method='enumerate' would sum over V**T = {V}**{T} = {n:.3g} sequences, above the budget of "
            f"{MAX_ENUMERATED_SEQUENCES} (gflow._loss_data.MAX_ENUMERATED_SEQUENCES). Use method='counts' "
            "(exact, polynomial in T, no positional encoding), 'meanfield' (T -> infinity) or 'sampled'."
        )
    P, init = np.asarray(spec.P), np.asarray(spec.init)
    tokens = np.stack(np.unravel_index(np.arange(n), (V,) * T), axis=1).astype(np.int32)  # (n, T)
    with np.errstate(divide="ignore"):  # log 0 = -inf marks impossible sequences (probability 0)
        log_init, log_P = np.log(init), np.log(P)
    logp = log_init[tokens[:, 0]]
    for t in range(1, T):
        logp = logp + log_P[tokens[:, t - 1], tokens[:, t]]
    prob = np.exp(logp)
    return SequenceData(tokens=jnp.asarray(tokens), weights=jnp.asarray(prob),
                        targets=jnp.asarray(P[tokens]), position_weights=jnp.asarray(_position_weights(spec)))


def sampled_data(spec: MarkovSpec, n_samples: int, key: PRNGKeyArray) -> SequenceData:
    """A fixed sample of `n_samples` sequences $x_1..x_{T+1}$; targets are the observed next tokens."""
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise ValueError(f"`n_samples` must be an integer >= 1 for method='sampled'; got {n_samples!r}.")
    seqs = spec.sample(key, int(n_samples))
    targets = jax.nn.one_hot(seqs[:, 1:], spec.V, dtype=jnp.float64)
    return SequenceData(tokens=seqs[:, :-1], weights=jnp.full((n_samples,), 1.0 / n_samples),
                        targets=targets, position_weights=jnp.asarray(_position_weights(spec)))


def count_state_bound(V: int, T: int, positions: str) -> int:
    """Upper bound on the number of (query token, count vector) states the counts method visits:
    at position t the query token has count >= 1 and the other t-1 tokens are spread over V types."""
    ts = [T] if positions == "last" else range(1, T + 1)
    return sum(V * math.comb(t - 1 + V - 1, V - 1) for t in ts)


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
    bound = count_state_bound(V, T, spec.positions)
    if bound > MAX_COUNT_STATES:
        raise ValueError(
            f"method='counts' would visit up to {bound} (token, count) states for V = {V}, T = {T}, "
            f"positions={spec.positions!r}, above the budget of {MAX_COUNT_STATES} "
            "(gflow._loss_data.MAX_COUNT_STATES). Use a shorter T, method='meanfield' (the T -> infinity limit) "
            "or method='sampled'."
        )
    P, init = np.asarray(spec.P), np.asarray(spec.init)
    rho = _position_weights(spec)
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
