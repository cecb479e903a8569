"""The data-source seam: what the losses, training, analysis and figures need from the data.

A data source is an `equinox.Module` (a pytree: its probability arrays are leaves, its sizes are
static), so one compiled loss serves every source of the same shapes. Everything downstream talks
to it through the methods below; nothing else about the data is assumed. The methods that only
some sources can offer (the first-order transition matrix the `counts` and `meanfield` losses need)
are not part of the seam: the loss methods' table says which sources each method supports.

A new source (an order-k or sparse-lag teacher, a text corpus) is one module that subclasses
`AbstractDataSource`, plus one row in `SOURCE_KINDS` (`gflow/data/__init__.py`) so that trajectory
files can name it.
"""

from __future__ import annotations

import abc
import json
from typing import Any, ClassVar

import equinox as eqx
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ..common import check_int
from ._enumerate import enumerate_contexts, over_budget

POSITIONS = ("last", "all")
"""Which next-token predictions a sample scores: only the last (`x_{T+1}` from `x_1..x_T`), or the
average over every prefix (`x_{t+1}` from `x_1..x_t`, t = 1..T)."""


LEVEL_BUDGET = 2**20
"""The most states (windows, contexts) a source enumerates to compute its reference levels: about
a second of numpy and 100 MB at this size."""


def position_weights(T: int, positions: str) -> Float[np.ndarray, " T"]:
    """The weight of each scored position t = 1..T in the loss (they sum to one)."""
    rho = np.zeros(T)
    if positions == "last":
        rho[-1] = 1.0
    else:
        rho[:] = 1.0 / T
    return rho


def check_context_length(T) -> int:
    try:
        return check_int("T", T, 1)
    except ValueError:
        raise ValueError(f"`T` (the context length) must be an integer >= 1; got {T!r}.") from None


def check_positions(positions) -> str:
    if positions not in POSITIONS:
        raise ValueError(
            f"`positions` must be 'last' (score only the prediction of x_(T+1)) or 'all' (average over "
            f"t = 1..T); got {positions!r}."
        )
    return positions


def default_labels(V: int) -> tuple[str, ...]:
    return tuple(str(a) for a in range(V))


def check_labels(labels, V: int) -> tuple[str, ...]:
    if labels is None:
        return default_labels(V)
    labels = tuple(labels) if isinstance(labels, (list, tuple)) else labels
    if not isinstance(labels, tuple) or len(labels) != V or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"`labels` must be {V} strings, one per token (or None for '0'..'{V - 1}'); got {labels!r}.")
    repeated = sorted({x for x in labels if labels.count(x) > 1})
    if repeated:
        raise ValueError(f"`labels` must name each token once; {repeated} name several (tables and figures could "
                         "not tell them apart).")
    return labels


class AbstractDataSource(eqx.Module):
    """What gflow needs from the data. Subclasses set `kind` and implement the abstract methods.

    **The seam:**

    - `V`, `T` (also `context_length`), `positions`, `labels`: vocabulary size, context length,
      scored positions (`POSITIONS`), and one printable label per token (figures and tables show them).
    - `position_weights()`: the weight of each scored position.
    - `sample(key, n)`: `n` independent sequences $x_1..x_{T+1}$; traceable for a static `n`, so
      online SGD can draw inside its compiled loop.
    - `n_sequences()` and `sequence_law(budget)`: the exact law of the contexts $x_1..x_T$ with
      the exact next-token law at every position (what an exact enumerated loss needs), built on
      `all_contexts(budget)` (`enumerate_contexts`); `enumeration_over_budget(budget)` says, before
      anything is built, why the law is out of reach, naming the source's `enumeration_alternatives`.
    - `token_frequencies()`: how often each token occurs as a key (attention metrics weight by it).
    - `reference_levels(budget)`: named loss levels for the figures, best first; the first is the
      best loss any predictor can reach on the scored positions. Levels that would enumerate more
      than `budget` states are left out (an empty dict when none fits), never computed at any cost.
    - `to_json()` / `from_json()`: a stable serialisation; `cache_key()` derives from it.
    """

    kind: ClassVar[str]
    enumeration_alternatives: ClassVar[str] = "Use method='sampled' or 'dataset'"
    """What to use instead when the exact law is over budget (the end of `enumeration_over_budget`)."""
    T: eqx.AbstractVar[int]
    positions: eqx.AbstractVar[str]
    labels: eqx.AbstractVar[tuple[str, ...]]

    @property
    @abc.abstractmethod
    def V(self) -> int: ...

    @property
    def context_length(self) -> int:
        """$T$: a sample is $x_1..x_{T+1}$."""
        return self.T

    @abc.abstractmethod
    def sample(self, key: PRNGKeyArray, n: int) -> Int[Array, "n T_plus_1"]: ...

    def n_sequences(self) -> int:
        """How many contexts $x_1..x_T$ the exact law has (may be astronomically large)."""
        return self.V**self.T

    def enumeration_over_budget(self, budget: int) -> str | None:
        """Why the exact law of the contexts (`sequence_law`) does not fit in `budget` sequences, or `None`."""
        return over_budget(self.V, self.T, budget, alternatives=self.enumeration_alternatives)

    def all_contexts(self, budget: int) -> Int[np.ndarray, "N T"]:
        """Every context $x_1..x_T$ (row-major), or `ValueError` when there are more than `budget`."""
        return enumerate_contexts(self.V, self.T, budget, alternatives=self.enumeration_alternatives)

    @abc.abstractmethod
    def sequence_law(self, budget: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`(tokens (N, T), probabilities (N,), targets (N, T, V))`: every context with its
        probability and the exact law of the next token at each position. `ValueError` if N > `budget`."""

    @abc.abstractmethod
    def token_frequencies(self) -> Float[np.ndarray, " V"]: ...

    @abc.abstractmethod
    def reference_levels(self, budget: int = LEVEL_BUDGET) -> dict[str, float]: ...

    @abc.abstractmethod
    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict with `"kind"` and every field (`from_json` inverts it exactly)."""

    @classmethod
    @abc.abstractmethod
    def from_json(cls, data: dict[str, Any]) -> AbstractDataSource: ...

    # ------------------------------------------------------------------------------------------
    # derived: the same for every source
    def position_weights(self) -> Float[np.ndarray, " T"]:
        return position_weights(self.T, self.positions)

    def best_loss(self, budget: int = LEVEL_BUDGET) -> float | None:
        """The lowest loss any predictor can reach on the scored positions (`None` when computing it
        would enumerate more than `budget` states)."""
        return next(iter(self.reference_levels(budget).values()), None)

    def cache_key(self) -> str:
        """Equal for two sources exactly when their serialisations are equal."""
        return json.dumps(self.to_json(), sort_keys=True)
