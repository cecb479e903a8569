"""The loss methods, one row each: what it computes, what it supports, what options it takes.

`LOSS_METHODS` is the one place a new method (or a new data source's support for a method) goes.
`"auto"` tries the exact methods of `AUTO_ORDER` and falls back to `"sampled"`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from ..data import AbstractDataSource, MarkovSpec
from ..model import TransformerConfig
from ._data import (
    MAX_COUNT_STATES,
    MAX_ENUMERATED_SEQUENCES,
    MAX_LOSS_BYTES,
    SequenceData,
    TypeData,
    count_state_bound,
    counts_data,
    dataset_data,
    enumerate_data,
    meanfield_data,
    sampled_data,
    sequence_loss_bytes,
)

DEFAULT_SAMPLES = 4096


@dataclasses.dataclass(frozen=True)
class LossMethod:
    """One way to compute the loss.

    - `exact`: the population loss itself (not a limit, not an empirical risk).
    - `options`: the keyword options it takes (`n_samples`, `key`, `dataset`).
    - `unsupported(source, config)`: why it cannot serve this source and model, or `None`.
    - `build(source, options)`: its precomputed data (`SequenceData` or `TypeData`).
    """

    name: str
    summary: str
    exact: bool
    options: tuple[str, ...]
    unsupported: Callable[[AbstractDataSource, TransformerConfig], str | None]
    build: Callable[[AbstractDataSource, dict[str, Any]], SequenceData | TypeData]


def _needs_type_level(name: str, source, config) -> str | None:
    if not isinstance(source, MarkovSpec):
        return f"method={name!r} needs a first-order Markov chain (a MarkovSpec); got a {type(source).__name__}"
    if config.n_layers > 1:
        return (f"method={name!r} works at the level of token types, which holds for one attention layer only (a "
                "second layer attends from a stream that depends on the order of the context); use "
                "method='enumerate' or 'sampled' with n_layers=2")
    if config.positional != "none":
        return (f"method={name!r} works at the level of token types, so it needs positional='none'; the config has "
                f"positional={config.positional!r}. Use method='enumerate' (small V**T) or 'sampled'")
    return None


def _counts_unsupported(source, config) -> str | None:
    return _needs_type_level("counts", source, config) or _counts_over_budget(source)


def _counts_over_budget(source: MarkovSpec) -> str | None:
    bound = count_state_bound(source.V, source.T, source.positions)
    return None if bound <= MAX_COUNT_STATES else (
        f"method='counts' would visit up to {bound} (token, count) states for V = {source.V}, T = {source.T}, "
        f"positions={source.positions!r}, above the budget of {MAX_COUNT_STATES}. Use a shorter T, "
        "method='meanfield' (the T -> infinity limit) or method='sampled'")


def _meanfield_limit(source: MarkovSpec) -> str | None:
    return None if source.has_unique_stationary_law() else (
        "method='meanfield' is the T -> infinity limit, which needs a unique stationary law; this chain has several "
        "closed classes (where it ends depends on where it starts). Use method='counts' or 'enumerate'")


def _enumerate_unsupported(source, config) -> str | None:
    return source.enumeration_over_budget(MAX_ENUMERATED_SEQUENCES)


def _always_supported(source, config) -> None:
    return None


LOSS_METHODS: dict[str, LossMethod] = {m.name: m for m in (
    LossMethod("enumerate", "exact sum over every context; every config", True, (),
               _enumerate_unsupported, lambda source, o: enumerate_data(source)),
    LossMethod("counts", "exact, polynomial in T; first-order chains, no positional encoding", True, (),
               _counts_unsupported, lambda source, o: counts_data(source)),
    LossMethod("meanfield", "the T -> infinity limit; first-order chains, no positional encoding", False, (),
               lambda source, config: _needs_type_level("meanfield", source, config) or _meanfield_limit(source),
               lambda source, o: meanfield_data(source)),
    LossMethod("sampled", "empirical risk on n_samples sequences drawn with key; every source", False,
               ("n_samples", "key"), _always_supported,
               lambda source, o: sampled_data(source, o["n_samples"], jax.random.wrap_key_data(
                   np.asarray(o["key"], dtype=np.uint32)))),
    LossMethod("dataset", "empirical risk on a fixed dataset of sequences (N, T+1); every source", False,
               ("dataset",), _always_supported, lambda source, o: dataset_data(source, o["dataset"])),
)}
AUTO_ORDER = ("counts", "enumerate")
"""`"auto"` takes the first of these exact methods that supports the problem, else `"sampled"`."""
METHOD_NAMES = ("auto", *LOSS_METHODS)


MIN_AUTO_SAMPLES = 64
"""Below this many sequences an empirical risk is too noisy to stand in for the population loss."""


def resolve_auto(source: AbstractDataSource, config: TransformerConfig) -> tuple[str, int | None, str | None]:
    """What `"auto"` picks: `(method, n_samples, why)`. The first exact method of `AUTO_ORDER` that
    supports the problem (`n_samples` and `why` are `None`), else `"sampled"` with as many sequences
    (up to `DEFAULT_SAMPLES`) as fit in `MAX_LOSS_BYTES`, and the reasons no exact method fit.
    Raises `ValueError` when not even `MIN_AUTO_SAMPLES` sequences fit."""
    reasons = []
    for name in AUTO_ORDER:
        reason = LOSS_METHODS[name].unsupported(source, config)
        if reason is None:
            return name, None, None
        reasons.append(reason)
    per_sequence = sequence_loss_bytes(1, source.T, source.V, config)
    n_samples = min(DEFAULT_SAMPLES, MAX_LOSS_BYTES // per_sequence)
    if n_samples < MIN_AUTO_SAMPLES:
        raise ValueError(
            f"method='auto' found no method for T = {source.T}: no exact method fits ({'; '.join(reasons)}), and a "
            f"sampled loss needs about {per_sequence / 2**20:.3g} MiB per sequence, so fewer than {MIN_AUTO_SAMPLES} "
            f"sequences fit in the budget of {MAX_LOSS_BYTES / 2**30:.3g} GiB (gflow.losses.MAX_LOSS_BYTES). Use "
            "method='meanfield' (the T -> infinity limit) or a shorter T.")
    return "sampled", int(n_samples), "; ".join(reasons)
