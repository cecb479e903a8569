"""Markov-chain data: the transition matrix, its laws and samples.

`MarkovSpec` is the first data source (`AbstractDataSource`). Its arrays are float64 JAX arrays so
that specs are pytrees: a jitted function that takes a spec recompiles only when the *shapes*
(`V`, `T`) or the static fields change, never for new probabilities.
"""

from __future__ import annotations

import math
import os
from typing import Any, ClassVar, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ..common import as_prng_key, check_memory, is_integer, is_real
from ._corpora import default_corpus
from ._source import LEVEL_BUDGET, AbstractDataSource, check_context_length, check_labels, check_positions
from ._text import tokenize

ROW_SUM_TOL = 1e-9
"""Rows of `P` (and `init`) must sum to one within this absolute tolerance. Loose enough for
probabilities typed in decimal or produced by a normalisation, tight enough that an unnormalised
matrix is never taken for a stochastic one."""

Positions = Literal["last", "all"]


def _as_float_array(x, name: str) -> np.ndarray:
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be an array of numbers; got {x!r}.") from None


def _sum_tolerance(x, V: int) -> float:
    """How far from 1 a row of `x` may sum: `ROW_SUM_TOL`, or for an array of a lower-precision
    float type (float32 from PyTorch, a JAX array without x64) what its rounding allows, V times its
    machine epsilon: a float32 row normalised to 1 sums to 1 +- 1e-7, not 1e-9."""
    try:  # numpy's view of it: a PyTorch tensor's float32 as numpy's, bfloat16 as ml_dtypes' (JAX's)
        dtype = np.asarray(x).dtype
        eps = float(jnp.finfo(dtype).eps) if jnp.issubdtype(dtype, jnp.floating) else 0.0
    except (TypeError, ValueError):  # a dtype neither knows: the float64 tolerance
        eps = 0.0
    return max(ROW_SUM_TOL, V * eps)


def _as_probability_matrix(P, name: str = "P") -> np.ndarray:
    given = P
    P = _as_float_array(P, name)
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
    tolerance = _sum_tolerance(given, P.shape[0])
    bad = np.flatnonzero(np.abs(sums - 1.0) > tolerance)
    if bad.size:
        raise ValueError(
            f"rows of `{name}` must sum to 1 (tolerance {tolerance:g}); row {bad[0]} sums to "
            f"{float(sums[bad[0]]):.12g}. Normalise with P / P.sum(axis=1, keepdims=True)."
        )
    # exact in float64 (a float32 matrix within its rounding is renormalised; a float64 one moves by
    # at most ROW_SUM_TOL)
    return P / sums[:, None] if tolerance > ROW_SUM_TOL else P


def _as_distribution(p, V: int, name: str) -> np.ndarray:
    given = p
    p = _as_float_array(p, name)
    if p.shape != (V,):
        raise ValueError(f"`{name}` must be a distribution over the V = {V} tokens, shape ({V},); got shape {p.shape}.")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError(f"`{name}` must have finite, non-negative entries; got {p.tolist()}.")
    tolerance = _sum_tolerance(given, V)
    if abs(p.sum() - 1.0) > tolerance:
        raise ValueError(
            f"`{name}` must sum to 1 (tolerance {tolerance:g}); it sums to {float(p.sum()):.12g}. Divide it by its sum."
        )
    return p / p.sum() if tolerance > ROW_SUM_TOL else p


def check_transition_memory(V: int) -> None:
    """Refuse a vocabulary whose (V, V) transition matrix (and the few copies its laws take) cannot fit."""
    check_memory(f"a transition matrix over V = {V} tokens", 4 * 8 * V * V, "use a smaller vocabulary")


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


class MarkovSpec(AbstractDataSource):
    """A first-order Markov chain over `V` tokens, and which next-token predictions are scored.

    **Fields:**

    - `P`: `(V, V)` transition matrix, `P[a, b] = Pr(x_{t+1} = b | x_t = a)`.
    - `init`: `(V,)` law of `x_1`.
    - `T`: context length; a sample is `x_1 .. x_{T+1}`.
    - `positions`: `"last"` scores the prediction of `x_{T+1}` from `x_1..x_T`; `"all"` averages the
      losses of predicting `x_{t+1}` from `x_1..x_t` over `t = 1..T`.
    - `order`: the Markov order. Only 1 is implemented; the field is here so that order-k chains,
      whose `P` has one row per context of k tokens, fit in later without changing the API.
    - `labels`: one string per token, for figures and tables (default `"0"`, `"1"`, ...).

    Build one with `MarkovSpec.sticky`, `.dirichlet`, `.binary` or `.from_matrix`, or directly
    (`MarkovSpec(P, init, T)`, lists accepted); every path checks that `P` is stochastic and `init`
    a distribution, and raises `ValueError` naming the bad argument.
    """

    P: Float[Array, "V V"]
    init: Float[Array, " V"]
    T: int = eqx.field(static=True)
    positions: str = eqx.field(static=True)
    order: int = eqx.field(static=True)
    labels: tuple[str, ...] = eqx.field(static=True)

    kind: ClassVar[str] = "markov"
    enumeration_alternatives: ClassVar[str] = ("Use method='counts' (exact, polynomial in T, no positional encoding), "
                                               "'meanfield' (T -> infinity) or 'sampled'")

    def __init__(self, P, init, T: int, positions: str = "last", order: int = 1, labels=None):
        if isinstance(P, jax.core.Tracer) or isinstance(init, jax.core.Tracer):
            self.P, self.init = P, init  # built inside a transformation: checked where it was made
        else:
            P = _as_probability_matrix(P)
            self.P = jnp.asarray(P, dtype=jnp.float64)
            self.init = jnp.asarray(_as_distribution(init, P.shape[0], "init"), dtype=jnp.float64)
        self.T = check_context_length(T)
        self.positions = check_positions(positions)
        self.order = order
        self.labels = check_labels(labels, self.P.shape[0])

    def __check_init__(self):
        if self.order != 1:
            raise ValueError(f"`order` must be 1 (only first-order chains are implemented); got {self.order!r}.")

    # ----------------------------------------------------------------------------------------
    # constructors
    @classmethod
    def from_matrix(cls, P, T: int, init=None, *, positions: str = "last", labels=None) -> MarkovSpec:
        """A chain from its transition matrix `P`; `init` defaults to the stationary law."""
        P = _as_probability_matrix(P)
        V = P.shape[0]
        init = stationary_distribution(P) if init is None else _as_distribution(init, V, "init")
        return cls(P, init, T, positions=positions, labels=labels)

    @classmethod
    def sticky(cls, pi, lam: float, T: int, *, positions: str = "last", labels=None) -> MarkovSpec:
        """$P = \\lambda I + (1-\\lambda) \\mathbf 1 \\pi^\\top$: repeat the current token with
        probability $\\lambda$, else draw afresh from $\\pi$. Its stationary law is exactly `pi`."""
        shape = _as_float_array(pi, "pi").shape
        if len(shape) != 1 or shape[0] < 2:
            raise ValueError(f"`pi` must be a 1-d distribution over V >= 2 tokens; got shape {shape}.")
        pi = _as_distribution(pi, shape[0], "pi")  # from the given array: its precision sets the tolerance
        if not (is_real(lam) and 0.0 <= float(lam) < 1.0):
            raise ValueError(
                f"`lam` (the probability of repeating the current token) must be in [0, 1); got {lam!r}. "
                "lam = 1 would freeze the chain on its first token."
            )
        V = pi.shape[0]
        check_transition_memory(V)
        P = float(lam) * np.eye(V) + (1.0 - float(lam)) * np.outer(np.ones(V), pi)
        return cls.from_matrix(P, T, init=pi, positions=positions, labels=labels)

    @classmethod
    def binary(cls, p: float, q: float, T: int, *, positions: str = "last", labels=None) -> MarkovSpec:
        """Two states with $P = [[1-p, p], [q, 1-q]]$ (flip 0→1 with probability p, 1→0 with q)."""
        for name, v in (("p", p), ("q", q)):
            if not (is_real(v) and 0.0 <= float(v) <= 1.0):
                raise ValueError(f"`{name}` must be a probability in [0, 1]; got {v!r}.")
        p, q = float(p), float(q)
        if p == 0 and q == 0:
            raise ValueError("`p` and `q` are both 0: each state is absorbing, so there is no unique stationary "
                             "law. Use from_matrix(P, T, init=...) to fix the start.")
        P = np.array([[1.0 - p, p], [q, 1.0 - q]])
        return cls.from_matrix(P, T, positions=positions, labels=labels)

    @classmethod
    def dirichlet(cls, key: PRNGKeyArray | int, V: int, alpha: float, T: int, *, positions: str = "last",
                  labels=None) -> MarkovSpec:
        """Rows of `P` drawn independently from a symmetric Dirichlet(`alpha`) over `V` tokens
        (`key`: a PRNG key or an integer seed)."""
        key = as_prng_key("key", key)
        if not is_integer(V) or V < 2:
            raise ValueError(f"`V` (the vocabulary size) must be an integer >= 2; got {V!r}.")
        if not (is_real(alpha) and math.isfinite(float(alpha)) and float(alpha) > 0):
            raise ValueError(f"`alpha` (the Dirichlet concentration) must be a finite number > 0; got {alpha!r}.")
        check_transition_memory(int(V))
        P = np.asarray(jax.random.dirichlet(key, jnp.full((int(V),), float(alpha), dtype=jnp.float64),
                                            shape=(int(V),)))
        P = P / P.sum(axis=1, keepdims=True)
        try:
            stationary_distribution(P)
        except ValueError:  # its advice (pass init=) is from_matrix's, not this constructor's
            raise ValueError(f"`alpha` = {alpha!r} drew a chain with several closed classes (entries of a Dirichlet "
                             "draw with a small alpha underflow to exactly 0), so its stationary law is not unique; "
                             "use a larger alpha or another key, or MarkovSpec.from_matrix(P, T, init=...) with an "
                             "initial law of your own.") from None
        return cls.from_matrix(P, T, positions=positions, labels=labels)

    @classmethod
    def from_text(cls, text_or_path: str | os.PathLike | None = None, *, vocab_size: int, T: int,
                  level: str = "word", smoothing: float = 0.0, positions: str = "last") -> MarkovSpec:
        """The first-order chain of a text: the `vocab_size - 1` most frequent types plus OTHER (last),
        the bigram counts with additive `smoothing`, the empirical unigram law as `init`, and the
        token labels (`spec.labels`). `text_or_path`: a text, a file path, or `None` for the offline
        default corpus (`gflow.data.default_corpus()`). The estimator: `gflow/data/_text.py`, docs/text.md.
        """
        if not (is_real(smoothing) and math.isfinite(float(smoothing)) and float(smoothing) >= 0):
            raise ValueError(f"`smoothing` must be a finite number >= 0 (0: the exact bigram frequencies); "
                             f"got {smoothing!r}.")
        text = default_corpus() if text_or_path is None else text_or_path
        tokens = tokenize(text, vocab_size, level)
        return cls(tokens.transition_matrix(float(smoothing)), tokens.unigram(), T, positions=positions,
                   labels=tokens.labels)

    # ----------------------------------------------------------------------------------------
    # laws
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

    def position_laws(self) -> Float[np.ndarray, "T V"]:
        """The law of $x_t$ for t = 1..T: `init` $P^{t-1}$."""
        P = np.asarray(self.P)
        laws = [np.asarray(self.init)]
        for _ in range(self.T - 1):
            laws.append(laws[-1] @ P)
        return np.stack(laws)

    def conditional_entropy(self) -> float:
        """The best loss on the scored positions: $\\sum_t \\rho_t \\sum_a \\Pr(x_t = a) H(P_a)$,
        since the best predictor of $x_{t+1}$ from $x_1..x_t$ is $P(x_t, \\cdot)$. It equals the
        entropy rate when `init` is the stationary law."""
        row_entropy = np.array([_entropy(row) for row in np.asarray(self.P)])
        return float(self.position_weights() @ (self.position_laws() @ row_entropy))

    # ----------------------------------------------------------------------------------------
    # the data-source seam
    def sample(self, key: PRNGKeyArray, n: int) -> Int[Array, "n T_plus_1"]:
        """`n` independent sequences $x_1 .. x_{T+1}$ of the chain, as an int array `(n, T+1)`."""
        if not is_integer(n) or n < 1:
            raise ValueError(f"`n` (the number of sequences) must be an integer >= 1; got {n!r}.")
        return _sample(key, self.P, self.init, int(n), self.T + 1)

    def sequence_law(self, budget: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All $V^T$ contexts with their probabilities; the targets are the exact next-token laws
        $P(x_t, \\cdot)$, so the expectation over the next token is taken in closed form."""
        tokens = self.all_contexts(budget)  # (n, T)
        T = self.T
        P, init = np.asarray(self.P), np.asarray(self.init)
        with np.errstate(divide="ignore"):  # log 0 = -inf marks impossible sequences (probability 0)
            log_init, log_P = np.log(init), np.log(P)
        logp = log_init[tokens[:, 0]]
        for t in range(1, T):
            logp = logp + log_P[tokens[:, t - 1], tokens[:, t]]
        return tokens, np.exp(logp), P[tokens]

    def has_unique_stationary_law(self) -> bool:
        """Whether `P` has one closed class (else its stationary law is not unique, and the levels and
        frequencies that assume one are replaced by those of the laws of the scored positions)."""
        try:
            self.stationary()
        except ValueError:
            return False
        return True

    def token_frequencies(self) -> Float[np.ndarray, " V"]:
        """The stationary law $\\pi$: how often each token occurs, far into a sequence (for a chain with
        several closed classes, the mean law of the context positions under `init`)."""
        if self.has_unique_stationary_law():
            return self.stationary()
        return self.position_laws().mean(axis=0)

    def reference_levels(self, budget: int = LEVEL_BUDGET) -> dict[str, float]:
        """The best loss on the scored positions (the entropy rate when `init` is stationary), and
        the unigram entropy (the best loss without context, at stationarity). Closed forms: `budget`
        is never reached. For a chain with several closed classes (no unique stationary law; `init`
        says where it starts) the levels are those of the scored positions: the best possible loss,
        and the best loss without context (the entropy of their mean law)."""
        best = self.conditional_entropy()
        if not self.has_unique_stationary_law():
            mean_law = self.position_weights() @ self.position_laws()
            return {"best possible": best, "no context": _entropy(mean_law)}
        rate = self.entropy_rate()
        first = {"entropy rate": rate} if abs(best - rate) <= 1e-12 * max(1.0, rate) else {"best possible": best}
        return {**first, "unigram entropy": self.unigram_entropy()}

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "P": np.asarray(self.P).tolist(), "init": np.asarray(self.init).tolist(),
                "T": self.T, "positions": self.positions, "order": self.order, "labels": list(self.labels)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MarkovSpec:
        """Inverse of `to_json`; files of format 1 have no `kind`, `order` or `labels` (first order)."""
        return cls(data["P"], data["init"], data["T"], positions=data.get("positions", "last"),
                   order=data.get("order", 1), labels=data.get("labels"))


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
