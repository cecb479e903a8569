"""The population loss: cross-entropy of next-token prediction in expectation over the data.

`LossSpec` says which loss a run uses, completely (method, and its samples, key or dataset), so
that a trajectory can rebuild exactly the loss it was integrated on. `loss_function(source, config,
method)` builds, once, a `LossFunction`: a pytree holding the method's precomputed data that maps
parameters to the loss. It is what the flow integrates; `population_loss` is the one-shot form.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import warnings
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray, Scalar

from ..common import as_prng_key, check_int, check_memory, is_integer, key_data, stored_filter_jit
from ..data import AbstractDataSource
from ..model import ParamLayout, TransformerConfig, TransformerParams, check_params, sequence_logits, type_logits
from ._data import SequenceData, TypeData, sequence_loss_bytes
from ._methods import DEFAULT_SAMPLES, LOSS_METHODS, METHOD_NAMES, resolve_auto

_CACHE_SIZE = 32


def cross_entropy(targets: Float[Array, "... V"], logits: Float[Array, "... V"]) -> Float[Array, ...]:
    """$-\\sum_v target_v \\log softmax(logits)_v$ along the last axis (nats)."""
    return -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)


class LossFunction(eqx.Module):
    """`params -> loss` for one source, model and method.

    It is a pytree: pass it as an argument to a function under `jax.jit` or `equinox.filter_jit`,
    and new probabilities of the same shapes reuse the compiled code. `jax.jit(fn)` works too (the
    data are then constants of that compiled function, which serves this `fn` only): a loss function
    hashes and compares by identity, as functions do.
    """

    data: SequenceData | TypeData
    config: TransformerConfig = eqx.field(static=True)
    method: str = eqx.field(static=True)

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other) -> bool:
        return self is other

    def __call__(self, params: TransformerParams) -> Scalar:
        d = self.data
        if isinstance(d, TypeData):
            logits = type_logits(params, self.config, d.query, d.key_weights)
            return jnp.sum(d.weights * cross_entropy(d.targets, logits))
        logits = sequence_logits(params, d.tokens, self.config)
        per_position = cross_entropy(d.targets, logits)  # (N, T)
        return jnp.sum(d.weights * (per_position @ d.position_weights))


@dataclasses.dataclass(frozen=True, eq=False)
class LossSpec:
    """Which loss, completely: `method` (never `"auto"`: resolved when the spec is made) and the
    options it takes: `n_samples` and `key` (raw PRNG key words) for `"sampled"`, `dataset` (an int
    array `(N, T+1)`) for `"dataset"`.

    Its rules are checked whatever builds it (`loss_spec`, a trajectory file, a settings file):
    a method of `LOSS_METHODS`, each option present exactly when its method takes it."""

    method: str
    n_samples: int | None = None
    key: tuple[int, ...] | None = None
    dataset: np.ndarray | None = None

    def __post_init__(self):
        if self.method not in LOSS_METHODS:
            raise ValueError(f"a LossSpec's `method` must be one of {tuple(LOSS_METHODS)} (\"auto\" is resolved by "
                             f"gflow.losses.loss_spec); got {self.method!r}.")
        takes = LOSS_METHODS[self.method].options
        for name, value in (("n_samples", self.n_samples), ("key", self.key), ("dataset", self.dataset)):
            if (value is not None) != (name in takes):
                need = "needs" if name in takes else "does not take"
                raise ValueError(f"method={self.method!r} {need} `{name}`; got {name} = "
                                 f"{'an array' if isinstance(value, np.ndarray) else repr(value)}.")
        if self.n_samples is not None and not (is_integer(self.n_samples) and self.n_samples >= 1):
            raise ValueError(f"`n_samples` must be an integer >= 1; got {self.n_samples!r}.")
        if self.key is not None and not (isinstance(self.key, tuple) and len(self.key) >= 1
                                         and all(is_integer(k) and 0 <= k < 2**32 for k in self.key)):
            raise ValueError(f"a LossSpec's `key` must be the raw words of a PRNG key (uint32 integers); got "
                             f"{self.key!r}.")
        if self.dataset is not None and not (isinstance(self.dataset, np.ndarray) and self.dataset.ndim == 2
                                             and np.issubdtype(self.dataset.dtype, np.integer)):
            raise ValueError("a LossSpec's `dataset` must be an int array (N, T+1); check it with "
                             "gflow.losses.check_dataset.")

    def options(self) -> dict[str, Any]:
        return {"n_samples": self.n_samples, "key": self.key, "dataset": self.dataset}

    def fingerprint(self) -> tuple:
        """Equal for equal specs (the dataset by its bytes' digest)."""
        digest = None if self.dataset is None else hashlib.sha256(np.ascontiguousarray(self.dataset)).hexdigest()
        return (self.method, self.n_samples, self.key, digest)

    def __eq__(self, other) -> bool:
        return isinstance(other, LossSpec) and self.fingerprint() == other.fingerprint()

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def build(self, source: AbstractDataSource, config: TransformerConfig) -> LossFunction:
        """The loss function this spec describes (its data cached per source and spec)."""
        return LossFunction(data=_cached_data(source, self), config=config, method=self.method)

    def to_json(self) -> dict[str, Any]:
        """Everything but the dataset's contents (trajectory files store those as an array)."""
        return {"method": self.method, "n_samples": self.n_samples, "key": None if self.key is None else list(self.key),
                "dataset_shape": None if self.dataset is None else list(self.dataset.shape)}

    @classmethod
    def from_json(cls, data: dict[str, Any], dataset: np.ndarray | None = None) -> LossSpec:
        key = data.get("key")
        return cls(method=data["method"], n_samples=data.get("n_samples"),
                   key=None if key is None else tuple(int(k) for k in np.ravel(key)), dataset=dataset)


_DATA_CACHE: collections.OrderedDict = collections.OrderedDict()


def _cached_data(source: AbstractDataSource, spec: LossSpec) -> SequenceData | TypeData:
    # Keyed on the source's whole serialisation and the whole loss spec: nothing that changes the
    # loss can be left out of the key.
    cache_key = (source.cache_key(), spec.fingerprint())
    if cache_key in _DATA_CACHE:
        _DATA_CACHE.move_to_end(cache_key)
        return _DATA_CACHE[cache_key]
    data = LOSS_METHODS[spec.method].build(source, spec.options())
    _DATA_CACHE[cache_key] = data
    while len(_DATA_CACHE) > _CACHE_SIZE:
        _DATA_CACHE.popitem(last=False)
    return data


def check_dataset(dataset, source: AbstractDataSource) -> np.ndarray:
    """`dataset` as an int32 array `(N, T+1)` of tokens of `source`, or `ValueError` saying what is wrong."""
    data = np.asarray(dataset)
    T1 = source.context_length + 1
    if data.ndim != 2 or data.shape[1] != T1 or data.shape[0] < 1 or not np.issubdtype(data.dtype, np.integer):
        raise ValueError(f"`dataset` must be an int array (N, T+1) = (N, {T1}) of tokens with N >= 1; got "
                         f"{data.dtype} {data.shape}.")
    if data.min() < 0 or data.max() >= source.V:
        raise ValueError(f"`dataset` holds tokens outside 0..{source.V - 1} (min {data.min()}, max {data.max()}); "
                         "every token must index the vocabulary.")
    return data.astype(np.int32)


def loss_spec(source: AbstractDataSource, config: TransformerConfig, method: str | LossSpec = "auto", *,
              n_samples: int | None = None, key: PRNGKeyArray | int | None = None,
              dataset: Int[Any, "N T_plus_1"] | None = None, stacklevel: int = 3) -> LossSpec:
    """Check `method` and its options against the source and config, resolve `"auto"`, and return
    the complete `LossSpec`. `method` may itself be a `LossSpec` (another run's `record.loss`), which
    is checked and returned. Raises `ValueError` naming what does not fit."""
    if not isinstance(source, AbstractDataSource):
        raise ValueError(f"`spec` must be a gflow data source (e.g. MarkovSpec.sticky(...)); got {type(source)!r}.")
    if not isinstance(config, TransformerConfig):
        raise ValueError(f"`config` must be a gflow.TransformerConfig; got {type(config)!r}.")
    return resolve_loss_spec(source, config, method, n_samples=n_samples, key=key, dataset=dataset,
                             stacklevel=stacklevel + 1)


def resolve_loss_spec(source: AbstractDataSource, config: TransformerConfig, method: str | LossSpec, *,
                      n_samples=None, key=None, dataset=None, stacklevel: int = 3) -> LossSpec:
    """`loss_spec` for a source and config that the caller has checked already (`gflow.simulate`
    checks them with its own argument names)."""
    if isinstance(method, LossSpec):
        if any(v is not None for v in (n_samples, key, dataset)):
            raise ValueError("a LossSpec already holds its options; do not pass `n_samples`, `key` or `dataset` too.")
        reason = LOSS_METHODS[method.method].unsupported(source, config)
        if reason is not None:
            raise ValueError(reason + ".")
        return method
    if method not in METHOD_NAMES:
        raise ValueError(f"`method` must be one of {METHOD_NAMES}; got {method!r}.")
    if method == "auto":
        method, auto_samples, why = resolve_auto(source, config)
        if why is not None:
            warnings.warn(f"method='auto' fell back to 'sampled' with n_samples = {auto_samples} (an empirical risk, "
                          f"not the population loss; the most sequences up to {DEFAULT_SAMPLES} that fit in the "
                          f"memory budget), because no exact method fits: {why}.", stacklevel=stacklevel)
            n_samples = auto_samples if n_samples is None else n_samples
    row = LOSS_METHODS[method]
    given = {"n_samples": n_samples, "key": key, "dataset": dataset}
    extra = [name for name, value in given.items() if value is not None and name not in row.options]
    if extra:
        users = [m.name for m in LOSS_METHODS.values() if extra[0] in m.options]
        raise ValueError(f"`{extra[0]}` is only used by method={users[0]!r}; got method={method!r}.")
    reason = row.unsupported(source, config)
    if reason is not None:
        raise ValueError(reason + ".")
    if method == "sampled":
        n_samples = check_int("n_samples", DEFAULT_SAMPLES if n_samples is None else n_samples, 1)
        check_memory(f"a sampled loss on n_samples = {n_samples} sequences",
                     sequence_loss_bytes(n_samples, source.T, source.V, config), "use a smaller n_samples")
        return LossSpec(method, n_samples=n_samples, key=key_data(as_prng_key("key", 0 if key is None else key)))
    if method == "dataset":
        if dataset is None:
            raise ValueError("method='dataset' needs `dataset`: an int array (N, T+1) of token sequences.")
        dataset = check_dataset(dataset, source)
        check_memory(f"a dataset loss on {len(dataset)} sequences",
                     sequence_loss_bytes(len(dataset), source.T, source.V, config), "use fewer sequences")
        return LossSpec(method, dataset=dataset)
    return LossSpec(method)


def loss_function(spec: AbstractDataSource, config: TransformerConfig, method: str = "auto", *,
                  n_samples: int | None = None, key: PRNGKeyArray | int | None = None,
                  dataset: Int[Any, "N T_plus_1"] | None = None) -> LossFunction:
    """Build the population loss of `config` on the data source `spec` by `method`.

    **Methods** (all cross-entropy in nats; `gflow.losses.LOSS_METHODS` lists them):

    - `"enumerate"`: exact sum over every context (up to `MAX_ENUMERATED_SEQUENCES`); every config.
    - `"counts"`: exact, polynomial in $T$, for first-order chains and configs without positional
      encoding.
    - `"meanfield"`: the $T \\to \\infty$ limit (first-order chains, no positional encoding); cost
      $O(V^2 d)$.
    - `"sampled"`: empirical risk on `n_samples` sequences drawn with `key` (defaults 4096 and
      seed 0); every config and size.
    - `"dataset"`: empirical risk on a fixed `dataset`, an int array `(N, T+1)` of sequences.
    - `"auto"`: `"counts"` if it fits, else `"enumerate"`, else `"sampled"` with a warning saying why.
    """
    return loss_spec(spec, config, method, n_samples=n_samples, key=key, dataset=dataset).build(spec, config)


def population_loss(params: TransformerParams, spec: AbstractDataSource, config: TransformerConfig,
                    method: str = "auto", *, n_samples: int | None = None, key: PRNGKeyArray | int | None = None,
                    dataset: Int[Any, "N T_plus_1"] | None = None) -> Scalar:
    """The population loss of `params` (see `loss_function` for the methods).

    Differentiable in `params` (`jax.grad(lambda p: population_loss(p, spec, config))`). Inside
    your own `jax.jit`, build the `LossFunction` once outside and call it instead.
    """
    fn = loss_function(spec, config, method, n_samples=n_samples, key=key, dataset=dataset)
    check_params(params, config, spec)
    return evaluate(fn, params)


@eqx.filter_jit
def evaluate(fn: LossFunction, params: TransformerParams) -> Scalar:
    """`fn(params)` as one compiled call (instead of dozens of separately dispatched operations)."""
    return fn(params)


@stored_filter_jit
def loss_and_gradient_norm(fn: LossFunction, layout: ParamLayout, ys: Float[Array, "n n_params"]
                           ) -> tuple[Float[Array, " n"], Float[Array, " n"]]:
    """The loss and $\\|\\nabla L\\|$ at each of `n` flat states (one compiled call; what a trajectory
    records at its saved points)."""
    loss, grad = jax.vmap(jax.value_and_grad(lambda y: fn(layout.unflatten(y))))(ys)
    return loss, jnp.linalg.norm(grad, axis=-1)
