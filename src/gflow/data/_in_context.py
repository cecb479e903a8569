"""In-context Markov chains: every sequence draws its own transition matrix, so a model must estimate
the bigram statistics from the context itself (Edelman et al. 2024, "The evolution of statistical
induction heads"; Varre, Yüce, Flammarion, ICML 2025).

Each row of a sequence's matrix is drawn independently from a symmetric Dirichlet(`alpha`), and its
first token uniformly. Integrating the matrix out (a Pólya urn per row), the law of a context is

$$p(x_1..x_T) = \\frac1V \\prod_a \\frac{\\Gamma(V\\alpha)}{\\Gamma(V\\alpha + n_a)} \\prod_b
\\frac{\\Gamma(\\alpha + n_{ab})}{\\Gamma(\\alpha)},$$

with $n_{ab}$ the transitions $a \\to b$ in it, and the law of the next token is the posterior
predictive $(n_{x_t b} + \\alpha) / (n_{x_t} + V\\alpha)$ of the transitions seen so far. Both are
exact here (the product of predictives is the Dirichlet-multinomial), so `enumerate` is the exact
population loss within its budget.

Reference levels (`reference_levels`, exact by enumeration): the **in-context bigram** level (the
Bayes predictor above: the best possible loss), the **in-context unigram** level (the best predictor
that sees only how many times each token occurs in the context, not their order: a counts-only
class), and the **uniform** level $\\log V$ (every position's marginal is uniform by symmetry).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ..common import is_integer, is_real
from ._source import LEVEL_BUDGET, AbstractDataSource, check_context_length, check_labels, check_positions

INITS = ("uniform",)


class InContextMarkovSpec(AbstractDataSource):
    """Sequences of `T + 1` tokens from a first-order chain whose transition matrix is drawn afresh for
    every sequence, rows i.i.d. Dirichlet(`alpha`) over `V` tokens; the first token uniform.

    **Fields:** `V` (>= 2), `alpha` (> 0: small alpha, sparse and nearly deterministic rows; large,
    nearly uniform ones), `T` (>= 2), `positions` (`"last"` or `"all"`), `init` (`"uniform"`),
    `labels`."""

    vocab: int = eqx.field(static=True)
    alpha: float = eqx.field(static=True)
    T: int = eqx.field(static=True)
    positions: str = eqx.field(static=True)
    init: str = eqx.field(static=True)
    labels: tuple[str, ...] = eqx.field(static=True)

    kind: ClassVar[str] = "in_context_markov"
    enumeration_alternatives: ClassVar[str] = ("Use method='sampled' or 'dataset' (sequences and matrices drawn "
                                               "from the same law), a smaller V or a shorter T")

    def __init__(self, V: int, alpha: float, T: int, *, positions: str = "last", init: str = "uniform",
                 labels=None):
        if not (is_integer(V) and int(V) >= 2):
            raise ValueError(f"`V` (the vocabulary size) must be an integer >= 2; got {V!r}.")
        if not (is_real(alpha) and math.isfinite(float(alpha)) and float(alpha) > 0):
            raise ValueError(f"`alpha` (the Dirichlet concentration of every row) must be a finite number > 0; "
                             f"got {alpha!r}.")
        T = check_context_length(T)
        if T < 2:
            raise ValueError(f"`T` must be at least 2 (a context needs a transition to learn from); got {T!r}.")
        if init not in INITS:
            raise ValueError(f"`init` must be one of {INITS} (the first token's law); got {init!r}.")
        self.vocab, self.alpha, self.T = int(V), float(alpha), T
        self.positions = check_positions(positions)
        self.init = init
        self.labels = check_labels(labels, int(V))

    @property
    def V(self) -> int:
        return self.vocab

    # ----------------------------------------------------------------------------------------------
    def sample(self, key: PRNGKeyArray, n: int) -> Int[Array, "n T_plus_1"]:
        """`n` sequences $x_1..x_{T+1}$, each from its own matrix (traceable for a static `n`)."""
        if not is_integer(n) or n < 1:
            raise ValueError(f"`n` (the number of sequences) must be an integer >= 1; got {n!r}.")
        return _sample(key, int(n), self.V, self.alpha, self.T + 1)

    def predictive(self, tokens: Int[np.ndarray, "N t"]) -> Float[np.ndarray, "N V"]:
        """The posterior predictive law of the next token after each context (its transitions so far)."""
        tokens = np.asarray(tokens)
        N, t = tokens.shape
        counts = np.zeros((N, self.V, self.V))
        rows = np.arange(N)
        for s in range(t - 1):
            counts[rows, tokens[:, s], tokens[:, s + 1]] += 1
        last = counts[rows, tokens[:, -1]]  # (N, V): transitions out of the current token
        return (last + self.alpha) / (last.sum(axis=1, keepdims=True) + self.V * self.alpha)

    def sequence_law(self, budget: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every context with its probability (the Dirichlet-multinomial, as a product of predictives)
        and the posterior predictive at every position."""
        tokens = self.all_contexts(budget)
        N, T, V = len(tokens), self.T, self.V
        counts = np.zeros((N, V, V))
        rows = np.arange(N)
        targets = np.zeros((N, T, V))
        prob = np.full(N, 1.0 / V)
        for t in range(T):
            last = counts[rows, tokens[:, t]]
            targets[:, t] = (last + self.alpha) / (last.sum(axis=1, keepdims=True) + V * self.alpha)
            if t < T - 1:
                prob = prob * targets[rows, t, tokens[:, t + 1]]
                counts[rows, tokens[:, t], tokens[:, t + 1]] += 1
        return tokens, prob, targets

    def token_frequencies(self) -> Float[np.ndarray, " V"]:
        """Uniform: every position's marginal is uniform by symmetry."""
        return np.full(self.V, 1.0 / self.V)

    def reference_levels(self, budget: int = LEVEL_BUDGET) -> dict[str, float]:
        """The in-context bigram (Bayes) level, the in-context unigram (counts-only) level, and the
        uniform level $\\log V$; the first two enumerate the $V^T$ contexts (none beyond `budget`)."""
        uniform = {"uniform": math.log(self.V)}
        if self.enumeration_over_budget(budget) is not None:
            return uniform
        tokens, prob, targets = self.sequence_law(budget)
        rho = self.position_weights()
        bayes = unigram = 0.0
        for t in range(self.T):
            if rho[t] == 0:
                continue
            p_t = targets[:, t]
            bayes += rho[t] * float(prob @ -np.sum(p_t * np.log(p_t), axis=1))
            counts = np.stack([np.sum(tokens[:, : t + 1] == b, axis=1) for b in range(self.V)], axis=1)
            _, group = np.unique(counts, axis=0, return_inverse=True)
            group = group.ravel()
            mixture = np.zeros((group.max() + 1, self.V))
            np.add.at(mixture, group, prob[:, None] * p_t)
            mixture /= mixture.sum(axis=1, keepdims=True)
            unigram += rho[t] * float(prob @ -np.sum(p_t * np.log(mixture[group]), axis=1))
        return {"in-context bigram (Bayes)": bayes, "in-context unigram": unigram, **uniform}

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "V": self.V, "alpha": self.alpha, "T": self.T, "positions": self.positions,
                "init": self.init, "labels": list(self.labels)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InContextMarkovSpec:
        return cls(data["V"], data["alpha"], data["T"], positions=data.get("positions", "last"),
                   init=data.get("init", "uniform"), labels=data.get("labels"))


@eqx.filter_jit
def _sample(key, n: int, V: int, alpha: float, length: int):
    k_matrix, k_first, k_steps = jax.random.split(key, 3)
    P = jax.random.dirichlet(k_matrix, jnp.full((V,), alpha, dtype=jnp.float64), shape=(n, V))  # (n, V, V)
    logP = jnp.log(P)
    x0 = jax.random.randint(k_first, (n,), 0, V)
    rows = jnp.arange(n)

    def step(x, k):
        nxt = jax.random.categorical(k, logP[rows, x], axis=-1)
        return nxt, nxt

    _, rest = jax.lax.scan(step, x0, jax.random.split(k_steps, length - 1))
    return jnp.concatenate([x0[:, None], rest.T], axis=1).astype(jnp.int32)
