"""The model classes of a sparse high-order task, their teachers, levels and scales (docs/tasks.md).

A `LagClass` is the set of predictors that see only part of the context at each scored position:
`uniform` (nothing, not even the law of the next token), blocks S (`lag_class(spec, S)`; S empty:
*no context*: the tokens at the lags of the blocks in S), or `bag` (how often each token occurs in
the visible context, not at which lag: what uniform attention gives a model). The **teacher** of a
class is its best predictor, the Bayes conditional under the data's exact law; its **level** the
teacher's expected cross-entropy; its **scale** $g_c$ the smallest KL between its teacher and a coarser
class's. All exact, by enumerating the contexts (`class_teachers`). Which class the model is in, and
when it enters one, is `_lag_events.py`'s.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

from ..common import is_integer
from ..data import AbstractDataSource, SparseLagSpec, block_lags
from ..losses import MAX_ENUMERATED_SEQUENCES
from ..model import TransformerConfig, TransformerParams, sequence_logits
from ._signals import ROUNDOFF

ALL_SUBSETS = 4
"""Up to this many blocks the ladder holds every subset of blocks; above, the prefixes, the
strength-ordered chain and the single blocks."""

CLASS_KINDS = ("uniform", "blocks", "bag")


# ------------------------------------------------------------------------------------------------
# classes
@dataclasses.dataclass(frozen=True)
class LagClass:
    """A model class of the sparse-task ladder (module docstring): `kind` "uniform", "blocks" (the
    lags of the 1-based `blocks`; none: no context) or "bag". Build subsets with `lag_class(spec,
    blocks)`, which checks them against the teacher; `UNIFORM`, `NO_CONTEXT`, `BAG` are the others."""

    kind: str
    blocks: tuple[int, ...] = ()

    def __post_init__(self):
        if self.kind not in CLASS_KINDS:
            raise ValueError(f"`kind` must be one of {CLASS_KINDS}; got {self.kind!r}.")
        blocks = tuple(self.blocks)
        if self.kind != "blocks" and blocks:
            raise ValueError(f"`blocks` must be empty for a {self.kind!r} class; got {blocks!r}.")
        if not all(is_integer(k) and int(k) >= 1 for k in blocks) or len(set(blocks)) != len(blocks):
            raise ValueError(f"`blocks` must be distinct block numbers >= 1; got {blocks!r}.")
        object.__setattr__(self, "blocks", tuple(sorted(int(k) for k in blocks)))

    @property
    def label(self) -> str:
        if self.kind == "blocks":
            return "{" + ", ".join(map(str, self.blocks)) + "}" if self.blocks else "no context"
        return {"uniform": "uniform", "bag": "bag of context"}[self.kind]

    def coarser_than(self, other: LagClass) -> bool:
        """Whether everything this class sees is a function of what `other` sees (and not the reverse):
        uniform is below every class, no context below every class but uniform, subsets of blocks
        below their supersets. The bag is compared with no lag class (its counts are a function of
        the lags only when the blocks cover the whole context)."""
        if self == other or other.kind == "uniform":
            return False
        if self.kind == "uniform":
            return True
        if self.kind == "blocks" and not self.blocks:
            return True
        return self.kind == other.kind == "blocks" and set(self.blocks) < set(other.blocks)


UNIFORM = LagClass("uniform")
NO_CONTEXT = LagClass("blocks")
BAG = LagClass("bag")


def check_lag_spec(spec) -> None:
    if not isinstance(spec, SparseLagSpec):
        raise ValueError(f"`spec` must be a SparseLagSpec; got {type(spec).__name__}.")


def lag_class(spec: AbstractDataSource, blocks: Sequence[int]) -> LagClass:
    """The class that sees the lags of `blocks` (1-based block numbers of `spec`, any order). An empty
    `blocks` is refused, as more likely a filter that kept nothing than a request: the class that sees
    no lag is `NO_CONTEXT`."""
    check_lag_spec(spec)
    try:
        blocks = tuple(blocks)
    except TypeError:
        raise ValueError(f"`blocks` must be a sequence of block numbers in 1..K = {spec.K}; got {blocks!r}.") from None
    if not blocks:
        raise ValueError(f"`blocks` is empty: name at least one block in 1..K = {spec.K} (the class that sees no "
                         "lag is NO_CONTEXT).")
    unknown = [k for k in blocks if not (is_integer(k) and 1 <= int(k) <= spec.K)]
    if unknown:
        raise ValueError(f"`blocks` = {blocks!r} names {unknown!r}, not blocks of `spec` (1..K = {spec.K}).")
    if len(set(int(k) for k in blocks)) != len(blocks):
        raise ValueError(f"`blocks` = {blocks!r} names a block twice.")
    return LagClass("blocks", blocks)


def block_strengths(spec: AbstractDataSource) -> Float[np.ndarray, " K"]:
    """How strong each block is: the Frobenius norm of its matrix $A_k$ (the paper's $s_k$ for
    `SparseLagSpec.random`, whose normalised matrices have unit norm)."""
    check_lag_spec(spec)
    return np.linalg.norm(np.asarray(spec.A).reshape(spec.K, -1), axis=1)


def strength_order(spec: AbstractDataSource) -> list[int]:
    """The blocks (1-based), strongest first (ties: the more recent block first)."""
    s = block_strengths(spec)
    return [int(k) + 1 for k in sorted(range(spec.K), key=lambda k: (-s[k], k))]


def ladder_classes(spec: AbstractDataSource) -> tuple[LagClass, ...]:
    """The classes the ladder judges the model against: uniform, no context, the bag of context, and
    every non-empty subset of blocks when K <= `ALL_SUBSETS` (at most 16 classes); above, the
    prefixes 1..k, the strength-ordered chain (the strongest block alone, the two strongest, ...)
    and the single blocks."""
    check_lag_spec(spec)
    K = spec.K
    if K <= ALL_SUBSETS:
        subsets = [s for r in range(1, K + 1) for s in itertools.combinations(range(1, K + 1), r)]
    else:
        order = strength_order(spec)
        subsets = ([tuple(range(1, k + 1)) for k in range(1, K + 1)] + [tuple(order[:k]) for k in range(1, K + 1)]
                   + [(k,) for k in range(1, K + 1)])
    unique = list(dict.fromkeys(LagClass("blocks", s) for s in subsets))
    return (UNIFORM, NO_CONTEXT, BAG, *sorted(unique, key=lambda c: (len(c.blocks), c.blocks)))


def prefix_classes(spec: AbstractDataSource) -> tuple[LagClass, ...]:
    """The classes of blocks 1..k, k = 0..K (k = 0: no context): the columns of `LagProbes.kl`."""
    check_lag_spec(spec)
    return tuple(LagClass("blocks", tuple(range(1, k + 1))) for k in range(spec.K + 1))


# ------------------------------------------------------------------------------------------------
# the classes' teachers, levels and scales
def _check_classes(classes, spec: SparseLagSpec) -> tuple[LagClass, ...]:
    try:
        classes = tuple(classes)
    except TypeError:
        raise ValueError(f"`classes` must be a sequence of LagClass; got {classes!r}.") from None
    if len(classes) < 2 or not all(isinstance(c, LagClass) for c in classes):
        raise ValueError(f"`classes` must hold at least two LagClass (a class is judged against its neighbours); "
                         f"got {classes!r}.")
    for c in classes:
        if any(k > spec.K for k in c.blocks):
            raise ValueError(f"`classes`: class {c.label} names a block beyond `spec`'s blocks 1..K = {spec.K}.")
    if len(set(classes)) != len(classes):
        raise ValueError("`classes` holds a class twice.")
    return classes


def _features(c: LagClass, context: np.ndarray, lags: list[range], V: int) -> np.ndarray:
    """What class `c` sees of each context $x_1..x_t$ (rows), as integer columns."""
    t = context.shape[1]
    if c.kind == "bag":
        return np.stack([(context == a).sum(axis=1) for a in range(V)], axis=1)
    seen = sorted({i for k in c.blocks for i in lags[k - 1]})
    if c.kind == "uniform" or not seen:
        return np.zeros((len(context), 1), dtype=np.int64)
    return context[:, [t - i for i in seen]]  # lag i of a query predicting x_(t+1) is x_(t+1-i)


def _teacher_at(c: LagClass, t: int, tokens: np.ndarray, prob: np.ndarray, targets: np.ndarray, lags: list[range],
                V: int) -> tuple[np.ndarray, np.ndarray]:
    """Class c's teacher for the query at position t: which group each context falls in (what c sees
    of it), and the law of the next token in each group (the targets averaged over the group's
    contexts with their probabilities; uniform for the uniform class)."""
    _, inverse = np.unique(_features(c, tokens[:, :t], lags, V), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    if c.kind == "uniform":
        return inverse, np.full((inverse.max() + 1, V), 1.0 / V)
    mass = np.bincount(inverse, prob)
    law = np.zeros((len(mass), V))
    np.add.at(law, inverse, prob[:, None] * targets[:, t - 1])
    return inverse, law / np.where(mass > 0, mass, 1.0)[:, None]


def _cross_entropy(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.sum(np.where(p > 0, p * np.log(q), 0.0), axis=-1)


@dataclasses.dataclass(frozen=True, eq=False)
class ClassTeachers:
    """The teachers of `classes` on one `SparseLagSpec` (module docstring), exact by enumeration:

    - `levels[c]`: the teacher's expected cross-entropy on the scored positions, comparable with the
      loss (inside the burn-in every class but uniform predicts with the burn-in law's own
      conditional, as `SparseLagSpec.block_levels` does);
    - `scales[c]`: the class's own scale $g_c$ (inf when its teacher adds nothing to a coarser one's:
      such a class is never entered);
    - `kl(params, config)`: $D_c$ at each of a stack of parameters.

    Build with `class_teachers(spec, classes)`."""

    classes: tuple[LagClass, ...]
    levels: np.ndarray
    scales: np.ndarray
    tokens: np.ndarray
    positions: np.ndarray  # the scored query positions t >= L (1-based) the KL averages over
    weight: np.ndarray  # (N, P): context probability times normalised position weight
    groups: tuple[np.ndarray, ...]  # per class, (N * P,): which teacher row each (context, position) uses
    tables: tuple[np.ndarray, ...]  # per class, (G, V): the teacher's law in each group
    self_term: np.ndarray  # per class, E sum p_c log p_c
    _compiled: dict = dataclasses.field(default_factory=dict, repr=False)

    def index(self, c: LagClass) -> int:
        return self.classes.index(c)

    def predictions(self, c: LagClass) -> Float[np.ndarray, "N P V"]:
        """Class `c`'s teacher at every enumerated context (`tokens`) and scored position."""
        i = self.index(c)
        return self.tables[i][self.groups[i]].reshape(self.weight.shape + (-1,))

    def divergence(self, c: LagClass, other: LagClass) -> float:
        """$E\\,KL(p_c \\| p_{other})$ between two classes' teachers, as $D$ averages."""
        p, q = self.predictions(c), self.predictions(other)
        return float(np.sum(self.weight * (_cross_entropy(p, q) - _cross_entropy(p, p))))

    def ratio(self, kl: Float[np.ndarray, "n C"]) -> Float[np.ndarray, "n C"]:
        """$D_c / g_c$ (inf for a class with no scale)."""
        finite = np.isfinite(self.scales)
        return np.where(finite, kl / np.where(finite, self.scales, 1.0), np.inf)

    def kl(self, params: TransformerParams, config: TransformerConfig) -> Float[np.ndarray, "n C"]:
        """`D[i, c]` for a stack of parameters (a leading axis of length n), compiled once per config."""
        if config not in self._compiled:
            self._compiled[config] = self._divergences(config)
        return np.asarray(jax.lax.map(self._compiled[config], params))

    def _divergences(self, config: TransformerConfig):
        tokens = jnp.asarray(self.tokens)
        columns = jnp.asarray(self.positions - 1)  # logits at index t - 1 predict x_(t+1)
        weight = jnp.asarray(self.weight.reshape(-1))
        groups = [jnp.asarray(g) for g in self.groups]
        tables = [jnp.asarray(p) for p in self.tables]
        self_term = jnp.asarray(self.self_term)

        @jax.jit
        def divergences(params):
            log_q = jax.nn.log_softmax(sequence_logits(params, tokens, config)[:, columns], axis=-1)
            weighted = weight[:, None] * log_q.reshape(-1, log_q.shape[-1])
            # D_c = E sum p_c log p_c - sum_g p_c[g] . (sum of the weighted log q over group g)
            cross = jnp.stack([jnp.sum(p * jax.ops.segment_sum(weighted, g, num_segments=p.shape[0]))
                               for g, p in zip(groups, tables, strict=True)])
            return self_term - cross

        return divergences


def class_teachers(spec: AbstractDataSource, classes: Sequence[LagClass] | None = None) -> ClassTeachers:
    """The teachers, levels and scales of `classes` (default `ladder_classes(spec)`) on `spec`, by
    enumerating its $V^T$ contexts with their exact law (the `enumerate` budget applies)."""
    check_lag_spec(spec)
    classes = ladder_classes(spec) if classes is None else _check_classes(classes, spec)
    tokens, prob, targets = spec.sequence_law(MAX_ENUMERATED_SEQUENCES)
    V, L, T = spec.V, spec.L, spec.T
    rho = spec.position_weights()
    positions = np.array([t for t in range(L, T + 1) if rho[t - 1] > 0])
    if len(positions) == 0:
        raise ValueError("`spec` scores no query after the burn-in (positions='last' needs T >= L).")
    share = rho[positions - 1] / rho[positions - 1].sum()
    weight = prob[:, None] * share[None, :]
    lags = block_lags(spec.spans, spec.stride)
    burn_in = sum(rho[t - 1] * float(prob @ _cross_entropy(targets[:, t - 1], targets[:, t - 1]))
                  for t in range(1, L))
    groups, tables, levels, self_term = [], [], [], []
    for c in classes:
        rows, laws, offset = [], [], 0
        level = np.log(V) * rho[:L - 1].sum() if c.kind == "uniform" else burn_in
        for t in positions:
            inverse, law = _teacher_at(c, int(t), tokens, prob, targets, lags, V)
            rows.append(inverse + offset)
            laws.append(law)
            offset += len(law)
            level += rho[t - 1] * float(prob @ _cross_entropy(targets[:, t - 1], law[inverse]))
        groups.append(np.stack(rows, axis=1).reshape(-1))
        tables.append(np.concatenate(laws))
        levels.append(level)
        p = tables[-1][groups[-1]].reshape(weight.shape + (V,))
        self_term.append(-float(np.sum(weight * _cross_entropy(p, p))))
    teachers = ClassTeachers(classes=classes, levels=np.asarray(levels), scales=np.zeros(len(classes)),
                             tokens=tokens, positions=positions, weight=weight, groups=tuple(groups),
                             tables=tuple(tables), self_term=np.asarray(self_term))
    object.__setattr__(teachers, "scales", _scales(teachers))
    return teachers


def _scales(teachers: ClassTeachers) -> np.ndarray:
    """$g_c$: the smallest KL from c's teacher to a coarser class's; a class that adds nothing to a
    coarser one (a gap at round-off) has none (inf: it is never entered). The coarsest class takes the
    smallest non-zero KL from a finer class's teacher to its own."""
    classes = teachers.classes
    floor = ROUNDOFF * max(1.0, float(np.max(np.abs(teachers.levels))))
    out = np.full(len(classes), np.inf)
    for i, c in enumerate(classes):
        coarser = [o for o in classes if o.coarser_than(c)]
        if coarser:
            gaps = [teachers.divergence(c, o) for o in coarser]
        else:
            gaps = [g for g in (teachers.divergence(o, c) for o in classes if c.coarser_than(o)) if g > floor]
        if gaps and min(gaps) > floor:
            out[i] = min(gaps)
    return out


def class_levels(spec: AbstractDataSource, classes: Sequence[LagClass] | None = None) -> dict[str, float]:
    """Each class's level (its teacher's expected cross-entropy on the scored positions), by label."""
    teachers = class_teachers(spec, classes)
    return {c.label: float(x) for c, x in zip(teachers.classes, teachers.levels, strict=True)}
