"""Sparse high-order teachers (Yüksel, Alvarez Lucendo, Flammarion, 2026): the next token depends on
a few blocks of past positions, each through its own matrix and with its own strength.

The law (docs/tasks.md): with lag blocks $I_1, \\dots, I_K$ and weights $\\alpha_i$ inside each block,

$$x_t \\sim \\mathrm{softmax}\\Big(\\sum_k A_k \\sum_{i \\in I_k} \\alpha_i\\, e_{x_{t-i}}\\Big),$$

so `logits[b] = sum_k sum_{i in I_k} alpha_i A[k, b, x_{t-i}]`. Block 1 holds the most recent
`spans[0]` lags, block 2 the next `spans[1]`, and so on; with a `stride` s, block k starts at lag
k s + 1 instead (blocks overlap when s is below a span). A sequence starts with `L` (the largest lag)
burn-in tokens, uniform (`context="uniform"`, as in the paper's code) or drawn from the teacher's
own stationary law over windows of `L` tokens (`context="stationary"`), and then follows the teacher.
Everything here is exact: laws over the $V^L$ windows are computed by enumeration, under a budget.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ..common import as_prng_key, is_integer, is_real
from ._enumerate import enumerate_contexts
from ._source import LEVEL_BUDGET, AbstractDataSource, check_context_length, check_labels, check_positions

CONTEXTS = ("uniform", "stationary")
MAX_WINDOWS = 2**20
"""Most windows of `L` tokens ($V^L$) whose laws are computed exactly (stationary law, levels)."""


def _positive_ints(name: str, values) -> tuple[int, ...]:
    try:
        out = tuple(values)
    except TypeError:
        raise ValueError(f"`{name}` must be a sequence of integers >= 1; got {values!r}.") from None
    if not out or not all(is_integer(v) and int(v) >= 1 for v in out):
        raise ValueError(f"`{name}` must be a non-empty sequence of integers >= 1 (one per lag block); got {values!r}.")
    return tuple(int(v) for v in out)


def block_lags(spans: tuple[int, ...], stride: int | None) -> list[range]:
    """The lags of each block: contiguous from lag 1 (`stride=None`), or block k from lag k*stride + 1."""
    if stride is None:
        starts = list(itertools.accumulate((0,) + spans[:-1]))
    else:
        starts = [k * stride for k in range(len(spans))]
    return [range(s + 1, s + n + 1) for s, n in zip(starts, spans, strict=True)]


def _lag_weights(spans: tuple[int, ...], stride: int | None, weights) -> np.ndarray:
    """`(K, L)`: the weight of lag i (column i - 1) in block k."""
    lags = block_lags(spans, stride)
    L = max(r[-1] for r in lags)
    W = np.zeros((len(spans), L))
    if weights is not None:
        if len(weights) != len(spans):
            raise ValueError(f"`weights` must hold one sequence per block ({len(spans)}); got {len(weights)}.")
    for k, r in enumerate(lags):
        if weights is None:
            alpha = np.full(len(r), 1.0 / len(r))
        else:
            try:
                alpha = np.asarray(weights[k], dtype=np.float64).reshape(-1)
            except (TypeError, ValueError):
                raise ValueError(f"`weights[{k}]` must be numbers; got {weights[k]!r}.") from None
            if alpha.shape != (len(r),) or not np.all(np.isfinite(alpha)):
                raise ValueError(f"`weights[{k}]` must be {len(r)} finite numbers (block {k + 1} spans {len(r)} "
                                 f"lags); got {weights[k]!r}.")
        W[k, np.asarray(r) - 1] = alpha
    return W


def _prefix_laws(window: np.ndarray) -> list[np.ndarray]:
    """For t = 1..L-1, the law of $x_1..x_{t+1}$ (axes in order) from the burn-in window's law."""
    L = window.ndim
    return [window.sum(axis=tuple(range(t + 1, L))) if t + 1 < L else window for t in range(1, L)]


def _conditional_entropy(joint: np.ndarray) -> float:
    """$H(Y \\mid X)$ for a joint law with Y on the last axis (the other axes: X)."""
    context = joint.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(-np.sum(np.where(joint > 0, joint * np.log(joint / context), 0.0)))


class SparseLagSpec(AbstractDataSource):
    """A sparse high-order teacher over `V` tokens (module docstring) and which predictions are scored.

    **Fields:** `A` `(K, V, V)` (`A[k, b, a]`: the logit of next token b per unit weight of token a
    in block k); `spans`, `stride`, `weights` (per block, default uniform summing to one) define the
    blocks; `context`: the law of the `L` burn-in tokens; `T` (at least `L`, default `L`): a sample
    is `x_1 .. x_{T+1}`; `positions`; `labels`.

    Build one with `SparseLagSpec.random(...)` (the paper's construction) or from explicit
    matrices, `SparseLagSpec(A, spans, ...)`; bad arguments raise `ValueError` naming them.
    """

    A: Float[Array, "K V V"]
    spans: tuple[int, ...] = eqx.field(static=True)
    stride: int | None = eqx.field(static=True)
    weights: tuple[tuple[float, ...], ...] = eqx.field(static=True)
    context: str = eqx.field(static=True)
    T: int = eqx.field(static=True)
    positions: str = eqx.field(static=True)
    labels: tuple[str, ...] = eqx.field(static=True)

    kind: ClassVar[str] = "sparse_lag"
    enumeration_alternatives: ClassVar[str] = "Use method='sampled' or 'dataset', a smaller V or shorter spans"

    def __init__(self, A, spans, *, stride: int | None = None, weights=None, context: str = "uniform",
                 T: int | None = None, positions: str = "last", labels=None):
        spans = _positive_ints("spans", spans)
        if stride is not None and not (is_integer(stride) and int(stride) >= 1):
            raise ValueError(f"`stride` must be an integer >= 1 (or None for contiguous blocks); got {stride!r}.")
        stride = None if stride is None else int(stride)
        W = _lag_weights(spans, stride, weights)
        try:
            A = np.asarray(A, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"`A` must be an array of numbers of shape (K, V, V); got {A!r}.") from None
        if A.ndim != 3 or A.shape[1] != A.shape[2] or A.shape[1] < 2 or A.shape[0] != len(spans):
            raise ValueError(f"`A` must have shape (K, V, V) with K = len(spans) = {len(spans)} blocks and V >= 2 "
                             f"tokens; got shape {A.shape}.")
        if not np.all(np.isfinite(A)):
            raise ValueError("`A` holds non-finite entries (NaN or inf).")
        if context not in CONTEXTS:
            raise ValueError(f"`context` must be one of {CONTEXTS}; got {context!r}.")
        L = W.shape[1]
        T = L if T is None else check_context_length(T)
        if T < L:
            raise ValueError(f"`T` = {T} is shorter than the teacher's context: its blocks reach lag L = {L}. "
                             f"Use T >= {L} (or T=None for T = L).")
        self.A = jnp.asarray(A)
        self.spans, self.stride, self.context, self.T = spans, stride, context, T
        self.weights = tuple(tuple(float(W[k, i - 1]) for i in r) for k, r in enumerate(block_lags(spans, stride)))
        self.positions = check_positions(positions)
        self.labels = check_labels(labels, A.shape[1])
        if context == "stationary" and self.n_windows() > MAX_WINDOWS:
            raise ValueError(f"context='stationary' needs the law of all V**L = {A.shape[1]}**{L} windows, above "
                             f"the budget of {MAX_WINDOWS}; use context='uniform', a smaller V or shorter spans.")

    @classmethod
    def random(cls, key: PRNGKeyArray | int, V: int, spans, *, m: float = 1.7, scale: float = 1.0,
               rank: int | None = None, stride: int | None = None, weights=None, strengths=None,
               context: str = "uniform", T: int | None = None, positions: str = "last", labels=None) -> SparseLagSpec:
        """The paper's teacher: $A_k = s_k \\bar A_k$ with $\\bar A_k$ Gaussian (of rank `rank` if
        given: a product of $V\\times r$ and $r\\times V$ Gaussians), normalised to unit Frobenius
        norm, and strengths $s_k = m^{K-k}$ `scale` (block 1, the most recent, strongest), or the
        `strengths` given (one positive number per block: e.g. reversed for "reverse importance")."""
        key = as_prng_key("key", key)
        if not (is_integer(V) and int(V) >= 2):
            raise ValueError(f"`V` must be an integer >= 2; got {V!r}.")
        V = int(V)
        spans = _positive_ints("spans", spans)
        K = len(spans)
        if strengths is None:
            if not (is_real(m) and math.isfinite(float(m)) and float(m) > 0):
                raise ValueError(f"`m` (the strength ratio of successive blocks) must be a finite number > 0; "
                                 f"got {m!r}.")
            if not (is_real(scale) and math.isfinite(float(scale)) and float(scale) > 0):
                raise ValueError(f"`scale` must be a finite number > 0; got {scale!r}.")
            strengths = [float(m) ** (K - 1 - k) * float(scale) for k in range(K)]
        s = np.asarray(strengths, dtype=np.float64).reshape(-1)
        if s.shape != (K,) or not np.all(np.isfinite(s) & (s >= 0)):
            raise ValueError(f"`strengths` must be {K} finite numbers >= 0 (one per block); got {strengths!r}.")
        if rank is not None and not (is_integer(rank) and 1 <= int(rank) <= V):
            raise ValueError(f"`rank` must be an integer in 1..V = {V} (or None for full rank); got {rank!r}.")
        mats = []
        for k in jax.random.split(key, K):
            if rank is None:
                a = np.asarray(jax.random.normal(k, (V, V)))
            else:
                k1, k2 = jax.random.split(k)
                r = int(rank)
                a = np.asarray(jax.random.normal(k1, (V, r))) @ np.asarray(jax.random.normal(k2, (r, V)))
            mats.append(a / np.linalg.norm(a))
        A = s[:, None, None] * np.stack(mats)
        return cls(A, spans, stride=stride, weights=weights, context=context, T=T, positions=positions, labels=labels)

    # ----------------------------------------------------------------------------------------
    @property
    def V(self) -> int:
        return self.A.shape[1]

    @property
    def K(self) -> int:
        return len(self.spans)

    @property
    def L(self) -> int:
        """The largest lag: how many past tokens the teacher reads (the burn-in length)."""
        return max(r[-1] for r in block_lags(self.spans, self.stride))

    def lag_weights(self) -> Float[np.ndarray, "K L"]:
        """`W[k, i - 1]`: the weight of lag i in block k."""
        return _lag_weights(self.spans, self.stride, self.weights)

    def n_windows(self) -> int:
        return self.V**self.L

    def restrict(self, k: int) -> SparseLagSpec:
        """The teacher with its first `k` blocks only (the others' matrices set to zero): the same
        lags, context law and T, so its sequences and the model's inputs are comparable."""
        if not (is_integer(k) and 0 <= int(k) <= self.K):
            raise ValueError(f"`k` must be an integer in 0..K = {self.K}; got {k!r}.")
        A = np.asarray(self.A).copy()
        A[int(k):] = 0.0
        return SparseLagSpec(A, self.spans, stride=self.stride, weights=self.weights, context=self.context, T=self.T,
                             positions=self.positions, labels=self.labels)

    def next_token_probs(self, contexts: Int[Any, "N L"]) -> Float[Array, "N V"]:
        """The teacher's law of the next token after each context of `L` tokens, ordered oldest to
        newest (the last column is lag 1). Traceable."""
        contexts = jnp.asarray(contexts)
        if contexts.ndim != 2 or contexts.shape[1] != self.L:
            raise ValueError(f"`contexts` must have shape (N, L = {self.L}); got {contexts.shape}.")
        by_column = jnp.asarray(self.lag_weights()[:, ::-1])  # column j of a context is lag L - j
        inputs = jnp.transpose(self.A, (0, 2, 1))[:, contexts]  # (K, N, L, V): A[k, :, x] per position
        return jax.nn.softmax(jnp.einsum("kl,knlv->nv", by_column, inputs), axis=-1)

    # ----------------------------------------------------------------------------------------
    # exact laws over windows of L tokens
    def _all_windows(self) -> np.ndarray:
        return enumerate_contexts(self.V, self.L, MAX_WINDOWS, what="the exact laws", items="windows",
                                  alternatives="Use context='uniform' with method='sampled', a smaller V or shorter "
                                               "spans")

    def window_transitions(self) -> np.ndarray:
        """`(V^L, V)`: the teacher's next-token law after every window (row = window index)."""
        return np.asarray(self.next_token_probs(self._all_windows()))

    def initial_window_law(self, transitions: np.ndarray | None = None) -> Float[np.ndarray, " W"]:
        """The law of the burn-in window $x_1..x_L$ over the $V^L$ windows (row-major index);
        `transitions`: `window_transitions()`, if already computed."""
        n = self.n_windows()
        if self.context == "uniform":
            return np.full(n, 1.0 / n)
        probs = self.window_transitions() if transitions is None else transitions
        law = np.full(n, 1.0 / n)
        for _ in range(100_000):  # power iteration: the teacher's softmax makes the window chain ergodic
            new = self.advance(law, probs)
            if np.max(np.abs(new - law)) <= 1e-15:
                return new
            law = new
        raise ValueError("the stationary window law did not converge in 100,000 steps (a nearly reducible teacher); "
                         "use context='uniform'.")

    def advance(self, law: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """The window law one token later (drop the oldest token, append the next), given the teacher's
        `window_transitions()`."""
        V, L = self.V, self.L
        joint = (law[:, None] * probs).reshape((V,) + (V,) * (L - 1) + (V,))
        return joint.sum(axis=0).reshape(-1)

    def window_laws(self, transitions: np.ndarray | None = None) -> list[np.ndarray]:
        """The law of the window $x_{t-L+1}..x_t$ for t = L..T (index 0: the burn-in);
        `transitions`: `window_transitions()`, if already computed."""
        probs = self.window_transitions() if transitions is None else transitions
        laws = [self.initial_window_law(probs)]
        for _ in range(self.T - self.L):
            laws.append(self.advance(laws[-1], probs))
        return laws

    # ----------------------------------------------------------------------------------------
    # the data-source seam
    def sample(self, key: PRNGKeyArray, n: int) -> Int[Array, "n T_plus_1"]:
        """`n` sequences $x_1..x_{T+1}$: the burn-in window, then the teacher (traceable for static `n`)."""
        if not is_integer(n) or n < 1:
            raise ValueError(f"`n` (the number of sequences) must be an integer >= 1; got {n!r}.")
        k0, key = jax.random.split(key)
        if self.context == "uniform":
            x = jax.random.randint(k0, (int(n), self.L), 0, self.V)
        else:
            index = jax.random.categorical(k0, jnp.log(jnp.asarray(self.initial_window_law())), shape=(int(n),))
            x = jnp.stack(jnp.unravel_index(index, (self.V,) * self.L), axis=1)
        x = x.astype(jnp.int32)

        def step(window, k):
            nxt = jax.random.categorical(k, jnp.log(self.next_token_probs(window)), axis=-1).astype(jnp.int32)
            return jnp.concatenate([window[:, 1:], nxt[:, None]], axis=1), nxt

        _, rest = jax.lax.scan(step, x, jax.random.split(key, self.T + 1 - self.L))
        return jnp.concatenate([x, rest.T], axis=1)

    def sequence_law(self, budget: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every context $x_1..x_T$ with its probability; the targets are the exact next-token laws
        (the teacher after position L; within the burn-in, the burn-in law's own conditionals)."""
        V, T, L = self.V, self.T, self.L
        tokens = self.all_contexts(budget)
        n = len(tokens)
        window = self.initial_window_law().reshape((V,) * L)
        prob = window[tuple(tokens[:, :L].T)]
        targets = np.zeros((n, T, V))
        for t, marg in enumerate(_prefix_laws(window), start=1):  # x_(t+1) given x_1..x_t in the burn-in
            prefix = marg.sum(axis=-1)
            cond = marg / np.where(prefix > 0, prefix, 1.0)[..., None]
            targets[:, t - 1] = cond[tuple(tokens[:, :t].T)]
        for t in range(L, T + 1):
            probs = np.asarray(self.next_token_probs(tokens[:, t - L:t]))
            targets[:, t - 1] = probs
            if t < T:
                prob = prob * probs[np.arange(n), tokens[:, t]]
        return tokens, prob, targets

    def token_frequencies(self) -> Float[np.ndarray, " V"]:
        """How often each token occurs in a context $x_1..x_T$ (averaged over the positions)."""
        V, L = self.V, self.L
        laws = self.window_laws()
        first = laws[0].reshape((V,) * L)
        per_position = [first.sum(axis=tuple(j for j in range(L) if j != i)) for i in range(L)]
        per_position += [law.reshape((V,) * L).sum(axis=tuple(range(L - 1))) for law in laws[1:]]
        return np.mean(per_position, axis=0)

    def block_levels(self) -> list[float]:
        """The best loss of a predictor that sees only the lags of blocks 1..k, for k = 0..K (k = 0:
        no lag; k = K: the teacher itself, the best possible), on the scored positions: the class
        ladder's levels, decreasing in k. Inside the burn-in (positions t < L, scored when
        `positions="all"`) every level takes the burn-in law's own conditional entropy."""
        V, L = self.V, self.L
        rho = self.position_weights()
        probs = self.window_transitions()
        laws = self.window_laws(probs)
        burn_in = sum(rho[t - 1] * _conditional_entropy(marg)
                      for t, marg in enumerate(_prefix_laws(laws[0].reshape((V,) * L)), start=1))
        lags = block_lags(self.spans, self.stride)
        levels = []
        for k in range(self.K + 1):
            seen = {i for r in lags[:k] for i in r}
            hidden = tuple(L - i for i in range(1, L + 1) if i not in seen)  # axis L - i holds lag i
            total = burn_in
            for weight, law in zip(rho[L - 1:], laws, strict=True):
                joint = (law[:, None] * probs).reshape((V,) * L + (V,))
                total += weight * _conditional_entropy(joint.sum(axis=hidden) if hidden else joint)
            levels.append(float(total))
        return levels

    def reference_levels(self, budget: int = LEVEL_BUDGET) -> dict[str, float]:
        """The best possible loss (the teacher), then the best with blocks 1..k for k = K-1..0
        (on the positions after the burn-in; inside it nothing but the burn-in law can be learnt).
        They enumerate the $V^L$ windows: none when that exceeds `budget`."""
        if self.n_windows() > min(budget, MAX_WINDOWS):
            return {}
        levels = self.block_levels()
        out = {"best possible": levels[-1]}
        for k in range(self.K - 1, 0, -1):
            out[f"blocks 1..{k}"] = levels[k]
        out["no context"] = levels[0]
        return out

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "A": np.asarray(self.A).tolist(), "spans": list(self.spans), "stride": self.stride,
                "weights": [list(w) for w in self.weights], "context": self.context, "T": self.T,
                "positions": self.positions, "labels": list(self.labels)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SparseLagSpec:
        return cls(data["A"], data["spans"], stride=data["stride"], weights=data["weights"], context=data["context"],
                   T=data["T"], positions=data["positions"], labels=data["labels"])
