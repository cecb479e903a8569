"""Markov-chain data: the transition matrix, its laws and samples.

Everything a loss needs from the data lives in one `MarkovSpec`. The arrays are stored as
float64 JAX arrays so that specs are pytrees: a jitted function that takes a spec recompiles only
when the *shapes* (`V`, `T`) or the static fields change, never for new probabilities.
"""

from __future__ import annotations

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

ROW_SUM_TOL = 1e-9
"""Rows of `P` (and `init`) must sum to one within this absolute tolerance. Loose enough for
probabilities typed in decimal or produced by a normalisation, tight enough that an unnormalised
matrix is never taken for a stochastic one."""

Positions = Literal["last", "all"]


def _as_probability_matrix(P, name: str = "P") -> np.ndarray:
    P = np.asarray(P, dtype=np.float64)
    if P.ndim != 2 or P.shape[0] != P.shape[1]:
        raise ValueError(
            f"`{name}` must be a square (V, V) transition matrix; got shape {P.shape}. "
            "Pass P[a, b] = Pr(next token b | current token a)."
        )
    if P.shape[0] < 2:
        raise ValueError(f"`{name}` needs at least 2 states; got V = {P.shape[0]}.")
    if not np.all(np.isfinite(P)):
        raise ValueError(f"`{name}` has non-finite entries (NaN or inf); every entry must be a probability.")
    if np.any(P < 0):
        i, j = np.argwhere(P < 0)[0]
        raise ValueError(f"`{name}` has a negative entry {name}[{i}, {j}] = {P[i, j]}; probabilities must be >= 0.")
    sums = P.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > ROW_SUM_TOL)
    if bad.size:
        raise ValueError(
            f"rows of `{name}` must sum to 1 (tolerance {ROW_SUM_TOL:g}); row {bad[0]} sums to "
            f"{sums[bad[0]]!r}. Normalise with P / P.sum(axis=1, keepdims=True)."
        )
    return P


def _as_distribution(p, V: int, name: str) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if p.shape != (V,):
        raise ValueError(f"`{name}` must be a distribution over the V = {V} tokens, shape ({V},); got shape {p.shape}.")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError(f"`{name}` must have finite, non-negative entries; got {p.tolist()}.")
    if abs(p.sum() - 1.0) > ROW_SUM_TOL:
        raise ValueError(
            f"`{name}` must sum to 1 (tolerance {ROW_SUM_TOL:g}); it sums to {p.sum()!r}. Divide it by its sum."
        )
    return p


def _check_T(T) -> int:
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
        raise ValueError(f"`T` (the context length) must be an integer >= 1; got {T!r}.")
    return int(T)


def _check_positions(positions) -> str:
    if positions not in ("last", "all"):
        raise ValueError(
            f"`positions` must be 'last' (score only the prediction of x_(T+1)) or 'all' (average over "
            f"t = 1..T); got {positions!r}."
        )
    return positions


def stationary_distribution(P) -> np.ndarray:
    """The unique stationary law $\\pi = \\pi P$ of a transition matrix.

    Raises `ValueError` when the chain has several closed classes (so no unique stationary law):
    then the initial distribution must be given explicitly.
    """
    P = _as_probability_matrix(P)
    V = P.shape[0]
    A = P.T - np.eye(V)
    rank = np.linalg.matrix_rank(A, tol=1e-10)
    if rank != V - 1:
        raise ValueError(
            f"the chain has {V - rank} closed communicating classes, so its stationary law is not unique; "
            "pass `init=` (the law of x_1) explicitly."
        )
    # Solve (P^T - I) pi = 0 together with sum(pi) = 1 in least squares: exact for a rank V-1 system.
    M = np.vstack([A, np.ones((1, V))])
    rhs = np.zeros(V + 1)
    rhs[-1] = 1.0
    pi, *_ = np.linalg.lstsq(M, rhs, rcond=None)
    pi = np.clip(pi, 0.0, None)
    return pi / pi.sum()


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


class MarkovSpec(eqx.Module):
    """A first-order Markov chain over `V` tokens, and which next-token predictions are scored.

    **Fields:**

    - `P`: `(V, V)` transition matrix, `P[a, b] = Pr(x_{t+1} = b | x_t = a)`.
    - `init`: `(V,)` law of `x_1` (the stationary law by default).
    - `T`: context length; a sample is `x_1 .. x_{T+1}`.
    - `positions`: `"last"` scores the prediction of `x_{T+1}` from `x_1..x_T`; `"all"` averages the
      losses of predicting `x_{t+1}` from `x_1..x_t` over `t = 1..T`.
    - `order`: the Markov order. Only 1 is implemented; the field is here so that order-k chains,
      whose `P` has one row per context of k tokens, fit in later without changing the API.

    Build one with `MarkovSpec.sticky`, `.dirichlet`, `.binary` or `.from_matrix`, which validate
    their arguments and raise `ValueError` naming the bad one.
    """

    P: Float[Array, "V V"]
    init: Float[Array, " V"]
    T: int = eqx.field(static=True)
    positions: str = eqx.field(static=True, default="last")
    order: int = eqx.field(static=True, default=1)

    def __check_init__(self):
        if self.order != 1:
            raise ValueError(f"`order` must be 1 (only first-order chains are implemented); got {self.order!r}.")

    # ----------------------------------------------------------------------------------------
    # constructors
    @classmethod
    def from_matrix(cls, P, T: int, init=None, *, positions: str = "last") -> MarkovSpec:
        """A chain from its transition matrix `P`; `init` defaults to the stationary law."""
        P = _as_probability_matrix(P)
        T = _check_T(T)
        positions = _check_positions(positions)
        V = P.shape[0]
        init = stationary_distribution(P) if init is None else _as_distribution(init, V, "init")
        return cls(P=jnp.asarray(P, dtype=jnp.float64), init=jnp.asarray(init, dtype=jnp.float64), T=T,
                   positions=positions)

    @classmethod
    def sticky(cls, pi, lam: float, T: int, *, positions: str = "last") -> MarkovSpec:
        """$P = \\lambda I + (1-\\lambda) \\mathbf 1 \\pi^\\top$: repeat the current token with
        probability $\\lambda$, else draw afresh from $\\pi$. Its stationary law is exactly `pi`."""
        pi = np.asarray(pi, dtype=np.float64)
        if pi.ndim != 1 or pi.shape[0] < 2:
            raise ValueError(f"`pi` must be a 1-d distribution over V >= 2 tokens; got shape {pi.shape}.")
        pi = _as_distribution(pi, pi.shape[0], "pi")
        if not (isinstance(lam, (int, float, np.floating)) and 0.0 <= float(lam) < 1.0):
            raise ValueError(
                f"`lam` (the probability of repeating the current token) must be in [0, 1); got {lam!r}. "
                "lam = 1 would freeze the chain on its first token."
            )
        V = pi.shape[0]
        P = lam * np.eye(V) + (1.0 - lam) * np.outer(np.ones(V), pi)
        return cls.from_matrix(P, T, init=pi, positions=positions)

    @classmethod
    def binary(cls, p: float, q: float, T: int, *, positions: str = "last") -> MarkovSpec:
        """Two states with $P = [[1-p, p], [q, 1-q]]$ (flip 0→1 with probability p, 1→0 with q)."""
        for name, v in (("p", p), ("q", q)):
            if not (isinstance(v, (int, float, np.floating)) and 0.0 <= float(v) <= 1.0):
                raise ValueError(f"`{name}` must be a probability in [0, 1]; got {v!r}.")
        if p == 0 and q == 0:
            raise ValueError("`p` and `q` are both 0: each state is absorbing, so there is no unique stationary "
                             "law. Use from_matrix(P, T, init=...) to fix the start.")
        P = np.array([[1.0 - p, p], [q, 1.0 - q]])
        return cls.from_matrix(P, T, positions=positions)

    @classmethod
    def dirichlet(cls, key: PRNGKeyArray, V: int, alpha: float, T: int, *,
                  positions: str = "last") -> MarkovSpec:
        """Rows of `P` drawn independently from a symmetric Dirichlet(`alpha`) over `V` tokens."""
        if isinstance(V, bool) or not isinstance(V, (int, np.integer)) or V < 2:
            raise ValueError(f"`V` (the vocabulary size) must be an integer >= 2; got {V!r}.")
        if not (isinstance(alpha, (int, float, np.floating)) and alpha > 0 and np.isfinite(alpha)):
            raise ValueError(f"`alpha` (the Dirichlet concentration) must be a finite number > 0; got {alpha!r}.")
        P = np.asarray(jax.random.dirichlet(key, jnp.full((V,), float(alpha), dtype=jnp.float64), shape=(V,)))
        P = P / P.sum(axis=1, keepdims=True)
        return cls.from_matrix(P, T, positions=positions)

    # ----------------------------------------------------------------------------------------
    # properties
    @property
    def V(self) -> int:
        return self.P.shape[0]

    def stationary(self) -> Float[np.ndarray, " V"]:
        """The stationary law $\\pi$ of `P` (float64 numpy)."""
        return stationary_distribution(np.asarray(self.P))

    def entropy_rate(self) -> float:
        """$H = -\\sum_a \\pi_a \\sum_b P_{ab} \\log P_{ab}$ (nats): the best loss any predictor of
        $x_{t+1}$ from the past can reach at stationarity."""
        P = np.asarray(self.P)
        pi = self.stationary()
        return float(sum(pi[a] * _entropy(P[a]) for a in range(self.V)))

    def unigram_entropy(self) -> float:
        """$-\\sum_a \\pi_a \\log \\pi_a$ (nats): the best loss of a predictor that ignores the context."""
        return _entropy(self.stationary())

    def sample(self, key: PRNGKeyArray, n: int) -> Int[Array, "n T_plus_1"]:
        """`n` independent sequences $x_1 .. x_{T+1}$ of the chain, as an int array `(n, T+1)`."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"`n` (the number of sequences) must be an integer >= 1; got {n!r}.")
        return _sample(key, self.P, self.init, int(n), self.T + 1)


def sample_chain(key: PRNGKeyArray, P: Float[Array, "V V"], init: Float[Array, " V"], n: int,
                 length: int) -> Int[Array, "n length"]:
    """`n` sequences of `length` tokens from the chain (traceable: usable inside jitted loops)."""
    k0, key = jax.random.split(key)
    logP = jnp.log(P)
    x0 = jax.random.categorical(k0, jnp.log(init), shape=(n,))

    def step(x, k):
        nxt = jax.random.categorical(k, logP[x], axis=-1)
        return nxt, nxt

    _, rest = jax.lax.scan(step, x0, jax.random.split(key, length - 1))
    return jnp.concatenate([x0[:, None], rest.T], axis=1).astype(jnp.int32)


_sample = eqx.filter_jit(sample_chain)
