"""The population loss: cross-entropy of next-token prediction in expectation over the chain.

`loss_function(spec, config, method)` builds, once, a `LossFunction`: a pytree holding the
method's precomputed data (see `_loss_data`) that maps parameters to the loss. It is what the flow
integrates; `population_loss` is the one-shot convenience form.
"""

from __future__ import annotations

import functools
import warnings
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray, Scalar

from ._loss_data import (
    MAX_COUNT_STATES,
    MAX_ENUMERATED_SEQUENCES,
    SequenceData,
    TypeData,
    count_state_bound,
    counts_data,
    enumerate_data,
    meanfield_data,
    sampled_data,
)
from ._markov import MarkovSpec
from ._model import TransformerConfig, TransformerParams, check_params, sequence_logits, type_logits

Method = Literal["auto", "enumerate", "counts", "meanfield", "sampled"]
METHODS = ("auto", "enumerate", "counts", "meanfield", "sampled")
DEFAULT_SAMPLES = 4096


def _cross_entropy(targets: Float[Array, "... V"], logits: Float[Array, "... V"]) -> Float[Array, ...]:
    return -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)


class LossFunction(eqx.Module):
    """`params -> loss` for one chain, model and method. A pytree: jit it, pass it to jitted code;
    new chain probabilities of the same shapes reuse the compiled code."""

    data: SequenceData | TypeData
    config: TransformerConfig = eqx.field(static=True)
    method: str = eqx.field(static=True)

    def __call__(self, params: TransformerParams) -> Scalar:
        d = self.data
        if isinstance(d, TypeData):
            logits = type_logits(params, self.config, d.query, d.key_weights)
            return jnp.sum(d.weights * _cross_entropy(d.targets, logits))
        logits = sequence_logits(params, d.tokens, self.config)
        per_position = _cross_entropy(d.targets, logits)  # (N, T)
        return jnp.sum(d.weights * (per_position @ d.position_weights))


def _resolve_auto(spec: MarkovSpec, config: TransformerConfig) -> tuple[str, str | None]:
    """The exact method that fits, or 'sampled' with the reason no exact one does."""
    reasons = []
    if config.positional == "none":
        bound = count_state_bound(spec.V, spec.T, spec.positions)
        if bound <= MAX_COUNT_STATES:
            return "counts", None
        reasons.append(f"'counts' needs up to {bound} states (budget {MAX_COUNT_STATES})")
    else:
        reasons.append("'counts' needs a config without positional encoding")
    n = spec.V**spec.T
    if n <= MAX_ENUMERATED_SEQUENCES:
        return "enumerate", None
    reasons.append(f"'enumerate' needs V**T = {n:.3g} sequences (budget {MAX_ENUMERATED_SEQUENCES})")
    return "sampled", "; ".join(reasons)


def _check_method_fits(method: str, config: TransformerConfig) -> None:
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}; got {method!r}.")
    if method in ("counts", "meanfield") and config.positional != "none":
        raise ValueError(
            f"method={method!r} works at the level of token types, so it needs positional='none'; the config has "
            f"positional={config.positional!r}. Use method='enumerate' (small V**T) or 'sampled'."
        )


@functools.lru_cache(maxsize=32)
def _cached_data(method: str, P: bytes, init: bytes, V: int, T: int, positions: str, n_samples: int | None,
                 key: bytes | None):
    spec = MarkovSpec(P=jnp.asarray(np.frombuffer(P).reshape(V, V)), init=jnp.asarray(np.frombuffer(init)), T=T,
                      positions=positions)
    if method == "enumerate":
        return enumerate_data(spec)
    if method == "counts":
        return counts_data(spec)
    if method == "meanfield":
        return meanfield_data(spec)
    k = jax.random.wrap_key_data(jnp.asarray(np.frombuffer(key, dtype=np.uint32)))
    return sampled_data(spec, n_samples, k)


def loss_function(spec: MarkovSpec, config: TransformerConfig, method: str = "auto", *,
                  n_samples: int | None = None, key: PRNGKeyArray | None = None) -> LossFunction:
    """Build the population loss of `config` on `spec` by `method`.

    **Methods** (all cross-entropy in nats):

    - `"enumerate"`: exact sum over all $V^T$ sequences; every config.
    - `"counts"`: exact, polynomial in $T$, for configs without positional encoding.
    - `"meanfield"`: the $T \\to \\infty$ limit (no positional encoding); cost $O(V^2 d)$.
    - `"sampled"`: empirical risk on `n_samples` sequences drawn with `key` (defaults 4096 and
      `PRNGKey(0)`); every config and size.
    - `"auto"`: `"counts"` if it fits, else `"enumerate"`, else `"sampled"` with a warning saying why.
    """
    if not isinstance(spec, MarkovSpec):
        raise ValueError(f"`spec` must be a gflow.MarkovSpec (e.g. MarkovSpec.sticky(...)); got {type(spec)!r}.")
    if not isinstance(config, TransformerConfig):
        raise ValueError(f"`config` must be a gflow.TransformerConfig; got {type(config)!r}.")
    _check_method_fits(method, config)
    if method == "auto":
        method, why = _resolve_auto(spec, config)
        if why is not None:
            warnings.warn(f"method='auto' fell back to 'sampled' (an empirical risk, not the population loss): {why}.",
                          stacklevel=2)
    if method != "sampled" and (n_samples is not None or key is not None):
        raise ValueError(f"`n_samples` and `key` are only used by method='sampled'; got method={method!r}.")
    key_bytes = None
    if method == "sampled":
        n_samples = DEFAULT_SAMPLES if n_samples is None else n_samples
        key = jax.random.key(0) if key is None else key
        if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.wrap_key_data(key)
        key_bytes = np.asarray(jax.random.key_data(key), dtype=np.uint32).tobytes()
    P = np.ascontiguousarray(np.asarray(spec.P, dtype=np.float64))
    init = np.ascontiguousarray(np.asarray(spec.init, dtype=np.float64))
    data = _cached_data(method, P.tobytes(), init.tobytes(), spec.V, spec.T, spec.positions, n_samples, key_bytes)
    return LossFunction(data=data, config=config, method=method)


def population_loss(params: TransformerParams, spec: MarkovSpec, config: TransformerConfig,
                    method: str = "auto", *, n_samples: int | None = None,
                    key: PRNGKeyArray | None = None) -> Scalar:
    """The population loss of `params` (see `loss_function` for the methods).

    Differentiable in `params` (`jax.grad(lambda p: population_loss(p, spec, config))`). Inside
    your own `jax.jit`, build the `LossFunction` once outside and call it instead.
    """
    fn = loss_function(spec, config, method, n_samples=n_samples, key=key)
    check_params(params, config, spec)
    return _evaluate(fn, params)


@eqx.filter_jit
def _evaluate(fn: LossFunction, params: TransformerParams) -> Scalar:
    # One compiled call instead of dozens of separately dispatched operations.
    return fn(params)
