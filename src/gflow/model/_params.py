"""The trainable weights (`TransformerParams`): what each one is, its shape, and how it starts.

Names and shapes follow TransformerLens (`W_E`, `W_pos`, `W_Q`, `W_K`, `W_V`, `W_O`, `W_U`). Every
weight has one row in `PARAMETERS`, next to its field: its shape for a config and data source
(`None` when the config has no such part) and its initialiser. Everything else — the parameter
names, their order in flat vectors (`ParamLayout`) and in files, the checks of given weights — is
derived from the dataclass fields and this table, so adding a weight is a field and a row.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray, Real

from ..common import as_prng_key, check_memory, is_real
from ..data import AbstractDataSource
from ._config import TransformerConfig


class TransformerParams(eqx.Module):
    """The trainable weights; a weight is `None` when the config has no such part (`W_pos` without
    learned positions, `W_V`/`W_O` without a value path, `W_U` when tied, the LayerNorm weights
    `ln*_w`/`ln*_b` without LayerNorm, `W_in`/`b_in`/`W_out`/`b_out` without an MLP, `b_U` without an
    unembedding bias).

    A `Trajectory` stores the weights at every saved time in one `TransformerParams` whose arrays
    carry a leading time axis (`*batch`).
    """

    W_E: Float[Array, "*batch V d_model"]
    W_Q: Float[Array, "*batch n_heads d_model d_head"]
    W_K: Float[Array, "*batch n_heads d_model d_head"]
    W_U: Float[Array, "*batch d_model V"] | None = None
    W_pos: Float[Array, "*batch T d_model"] | None = None
    W_V: Float[Array, "*batch n_heads d_model d_head"] | None = None
    W_O: Float[Array, "*batch n_heads d_head d_model"] | None = None
    ln1_w: Float[Array, "*batch d_model"] | None = None
    ln1_b: Float[Array, "*batch d_model"] | None = None
    ln2_w: Float[Array, "*batch d_model"] | None = None
    ln2_b: Float[Array, "*batch d_model"] | None = None
    lnf_w: Float[Array, "*batch d_model"] | None = None
    lnf_b: Float[Array, "*batch d_model"] | None = None
    W_in: Float[Array, "*batch d_model mlp"] | None = None
    b_in: Float[Array, "*batch mlp"] | None = None
    W_out: Float[Array, "*batch mlp d_model"] | None = None
    b_out: Float[Array, "*batch d_model"] | None = None
    b_U: Float[Array, "*batch V"] | None = None
    W_Q2: Float[Array, "*batch n_heads d_model d_head"] | None = None
    W_K2: Float[Array, "*batch n_heads d_model d_head"] | None = None
    W_V2: Float[Array, "*batch n_heads d_model d_head"] | None = None
    W_O2: Float[Array, "*batch n_heads d_head d_model"] | None = None


PARAM_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TransformerParams))
"""Every weight's name, in the order of the fields (the order of flat vectors and files)."""


@dataclasses.dataclass(frozen=True)
class Gaussian:
    """Entries $N(0, \\sigma^2)$: $\\sigma$ = the `scale` asked for, or $\\text{fan\\_in}^{-\\gamma}$."""

    fan_in: Callable[[TransformerConfig, int], int]
    """The fan-in for `gamma` scaling, from the config and the vocabulary size."""

    random: bool = dataclasses.field(default=True, init=False)

    def sigma(self, config: TransformerConfig, V: int, scale: float | None, gamma: float | None) -> float:
        return float(scale) if scale is not None else float(self.fan_in(config, V) ** (-gamma))


@dataclasses.dataclass(frozen=True)
class Constant:
    """Every entry `value` (LayerNorm gains 1, biases 0), whatever the scale."""

    value: float
    random: bool = dataclasses.field(default=False, init=False)

    def draw(self, shape: tuple[int, ...]):
        return jnp.full(shape, self.value, dtype=jnp.float64)


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One weight: `shape(config, V, T)` (`None`: the config has no such part) and `init`."""

    name: str
    shape: Callable[[TransformerConfig, int, int], tuple[int, ...] | None]
    init: Gaussian | Constant


def _model_fan_in(config: TransformerConfig, V: int) -> int:
    return config.d_model


def _qkv_shape(config: TransformerConfig, V: int, T: int) -> tuple[int, ...]:
    return (config.n_heads, config.d_model, config.head_dim)


def _layernorm_shape(which: str):
    """A LayerNorm's gain or bias, `(d_model,)`: `ln1` and `lnf` with LayerNorm, `ln2` with LayerNorm and an MLP."""
    def shape(config: TransformerConfig, V: int, T: int) -> tuple[int, ...] | None:
        has = config.layernorm == "pre" and (which != "ln2" or config.mlp is not None)
        return (config.d_model,) if has else None
    return shape


def _mlp_shape(*dims: str):
    """A weight of the MLP (`None` without one), its shape named by `d_model` and `mlp`."""
    def shape(config: TransformerConfig, V: int, T: int) -> tuple[int, ...] | None:
        size = {"d_model": config.d_model, "mlp": config.mlp}
        return None if config.mlp is None else tuple(size[d] for d in dims)
    return shape


PARAMETERS: dict[str, Parameter] = {p.name: p for p in (
    # W_E is indexed by a one-hot token (fan-in V); W_O maps from the head space; the rest from d_model.
    Parameter("W_E", lambda c, V, T: (V, c.d_model), Gaussian(lambda c, V: V)),
    Parameter("W_Q", _qkv_shape, Gaussian(_model_fan_in)),
    Parameter("W_K", _qkv_shape, Gaussian(_model_fan_in)),
    Parameter("W_U", lambda c, V, T: None if c.tied else (c.d_model, V), Gaussian(_model_fan_in)),
    Parameter("W_pos", lambda c, V, T: (T, c.d_model) if c.positional == "learned" else None,
              Gaussian(_model_fan_in)),
    Parameter("W_V", lambda c, V, T: _qkv_shape(c, V, T) if c.value else None, Gaussian(_model_fan_in)),
    Parameter("W_O", lambda c, V, T: (c.n_heads, c.head_dim, c.d_model) if c.value else None,
              Gaussian(lambda c, V: c.head_dim)),
    # LayerNorm gains start at 1 and every bias at 0 (PyTorch's initialisation), whatever the scale.
    Parameter("ln1_w", _layernorm_shape("ln1"), Constant(1.0)),
    Parameter("ln1_b", _layernorm_shape("ln1"), Constant(0.0)),
    Parameter("ln2_w", _layernorm_shape("ln2"), Constant(1.0)),
    Parameter("ln2_b", _layernorm_shape("ln2"), Constant(0.0)),
    Parameter("lnf_w", _layernorm_shape("lnf"), Constant(1.0)),
    Parameter("lnf_b", _layernorm_shape("lnf"), Constant(0.0)),
    Parameter("W_in", _mlp_shape("d_model", "mlp"), Gaussian(_model_fan_in)),
    Parameter("b_in", _mlp_shape("mlp"), Constant(0.0)),
    Parameter("W_out", _mlp_shape("mlp", "d_model"), Gaussian(lambda c, V: c.mlp)),
    Parameter("b_out", _mlp_shape("d_model"), Constant(0.0)),
    Parameter("b_U", lambda c, V, T: (V,) if c.unembed_bias else None, Constant(0.0)),
    # the second attention layer (n_layers = 2): the first layer's weights, again
    Parameter("W_Q2", lambda c, V, T: _qkv_shape(c, V, T) if c.n_layers == 2 else None, Gaussian(_model_fan_in)),
    Parameter("W_K2", lambda c, V, T: _qkv_shape(c, V, T) if c.n_layers == 2 else None, Gaussian(_model_fan_in)),
    Parameter("W_V2", lambda c, V, T: _qkv_shape(c, V, T) if c.n_layers == 2 and c.value else None,
              Gaussian(_model_fan_in)),
    Parameter("W_O2", lambda c, V, T: (c.n_heads, c.head_dim, c.d_model) if c.n_layers == 2 and c.value else None,
              Gaussian(lambda c, V: c.head_dim)),
)}
"""Shape and initialiser of every weight, one row per field of `TransformerParams`."""

if tuple(PARAMETERS) != PARAM_NAMES:  # a field without a row (or a row without a field) is a bug here
    raise RuntimeError(f"PARAMETERS {tuple(PARAMETERS)} must list the fields of TransformerParams {PARAM_NAMES}.")


def param_shapes(config: TransformerConfig, spec: AbstractDataSource) -> dict[str, tuple[int, ...]]:
    """The shape of every weight the config uses, in field order (missing names are `None` in the params)."""
    shapes = {name: p.shape(config, spec.V, spec.context_length) for name, p in PARAMETERS.items()}
    return {name: shape for name, shape in shapes.items() if shape is not None}


def check_init_scale(scale, gamma) -> tuple[float | None, float | None]:
    """`(scale, gamma)` as floats, with the default `gamma = 0.5` when neither is given; `ValueError`
    naming the bad one. `init_params` and the `[init]` section of settings files both use it."""
    if scale is not None and gamma is not None:
        raise ValueError("give either `scale` (the standard deviation) or `gamma` (sigma = fan_in**-gamma), not both.")
    if scale is not None and not (is_real(scale) and math.isfinite(float(scale)) and float(scale) > 0):
        raise ValueError(f"`scale` must be a finite number > 0; got {scale!r}.")
    if gamma is not None and not (is_real(gamma) and math.isfinite(float(gamma))):
        raise ValueError(f"`gamma` must be a finite number; got {gamma!r}.")
    scale = None if scale is None else float(scale)
    gamma = None if gamma is None else float(gamma)
    return scale, (0.5 if gamma is None and scale is None else gamma)


def check_config_and_source(config, spec) -> None:
    """`ValueError` unless `config` is a `TransformerConfig` and `spec` a data source (the two are
    easily passed the other way round)."""
    swapped = isinstance(config, AbstractDataSource) and isinstance(spec, TransformerConfig)
    hint = " (the two are swapped: the order is config, then spec)" if swapped else ""
    if not isinstance(config, TransformerConfig):
        raise ValueError(f"`config` must be a gflow.TransformerConfig; got {type(config).__name__}{hint}.")
    if not isinstance(spec, AbstractDataSource):
        raise ValueError(f"`spec` must be a data source (gflow.MarkovSpec, InContextMarkovSpec, SparseLagSpec); got "
                         f"{type(spec).__name__}.")


def init_params(key: PRNGKeyArray | int, config: TransformerConfig, spec: AbstractDataSource, *,
                scale: float | Real[Array | np.ndarray | np.number, ""] | None = None,
                gamma: float | Real[Array | np.ndarray | np.number, ""] | None = None) -> TransformerParams:
    """Initial weights, float64, each by its initialiser (`PARAMETERS`).

    Gaussian weights are $N(0, \\sigma^2)$ with $\\sigma$ = `scale`, or $\\sigma = \\text{fan\\_in}^{-\\gamma}$
    (fan-in `V` for `W_E`, `d_head` for `W_O`, `mlp` for `W_out`, `d_model` otherwise); LayerNorm gains
    are 1 and biases 0. Small initialisation is
    `gamma > 0.5` (or a small `scale`); the condensation regime of the focus–dilution paper needs it.
    With neither given, `gamma = 0.5` (the usual $1/\\sqrt{\\text{fan\\_in}}$). `key` is a PRNG key or
    an integer seed; it is split once per Gaussian weight, in field order.
    """
    check_config_and_source(config, spec)
    key = as_prng_key("key", key)
    scale, gamma = check_init_scale(scale, gamma)
    shapes = param_shapes(config, spec)
    check_memory(f"the initial weights ({sum(math.prod(s) for s in shapes.values()):,} parameters)",
                 8 * sum(math.prod(s) for s in shapes.values()), "use a smaller d_model, d_head, n_heads, mlp or V")
    if gamma is not None:
        underflow = [name for name, p in PARAMETERS.items() if name in shapes and p.init.random
                     and p.init.fan_in(config, spec.V) ** (-gamma) == 0.0]
        if underflow:
            warnings.warn(f"`gamma` = {gamma:g} makes sigma = fan_in**-gamma underflow to 0 in float64 for "
                          f"{', '.join(underflow)}: those weights are exactly 0 (a stationary point of the flow, "
                          "which it never leaves). Use a smaller gamma, or `scale`.", stacklevel=2)
    random = [name for name in shapes if PARAMETERS[name].init.random]
    normals = _standard_normals(key, tuple(shapes[name] for name in random))
    drawn = {name: jax.device_put(PARAMETERS[name].init.sigma(config, spec.V, scale, gamma) * np.asarray(z))
             for name, z in zip(random, normals, strict=True)}  # scaled outside the program: as eager JAX rounds
    return TransformerParams(**{name: drawn[name] if name in drawn else PARAMETERS[name].init.draw(shape)
                                for name, shape in shapes.items()})


@eqx.filter_jit
def _standard_normals(key: PRNGKeyArray, shapes: tuple[tuple[int, ...], ...]) -> tuple[Float[Array, ...], ...]:
    """Standard normals of each of `shapes`, from `key` split once per weight: one compiled program
    instead of a dozen small ones, which took 0.17 s of a warm demo's start (2026-12-03). The same
    numbers as drawing them one by one; the scaling stays outside, where XLA cannot fold it into
    the transform (that moved weights by an ulp). Not stored (`stored_filter_jit`): loading the
    exported threefry program costs 0.1 s, more than tracing it."""
    keys = jax.random.split(key, len(shapes))
    return tuple(jax.random.normal(keys[i], shape, dtype=jnp.float64) for i, shape in enumerate(shapes))


def check_params(params: TransformerParams, config: TransformerConfig, spec: AbstractDataSource) -> None:
    """Raise `ValueError` if `params` do not have the shapes `config` and `spec` call for."""
    if not isinstance(params, TransformerParams):
        raise ValueError(f"`params` must be a gflow.TransformerParams (see gflow.init_params); got {type(params)!r}.")
    shapes = param_shapes(config, spec)
    for name in PARAM_NAMES:
        w = getattr(params, name)
        want = shapes.get(name)
        if want is None and w is not None:
            if name.endswith("2") and config.n_layers == 1:
                raise ValueError(f"`params.{name}` belongs to a second attention layer, but the config has n_layers=1; "
                                 "use the config these weights were made for (n_layers=2).")
            if name == "W_U" and config.tied:
                raise ValueError("`params.W_U` is set but the config is tied (tied=True: the unembedding is W_E^T); "
                                 "set W_U to None, or use tied=False.")
            raise ValueError(f"`params.{name}` is set but the config has no such part; set it to None or change "
                             f"the config ({config}).")
        if want is not None:
            if w is None:
                hint = (" (the weights are a one-layer model's; a two-layer config needs its second layer)"
                        if name.endswith("2") else "")
                raise ValueError(f"`params.{name}` is None but the config needs shape {want}{hint}.")
            if tuple(jnp.shape(w)) != want:
                raise ValueError(f"`params.{name}` has shape {tuple(jnp.shape(w))}; the config and spec need {want} "
                                 "(V from the spec, d_model/d_head/n_heads from the config).")


def params_to_arrays(params: TransformerParams) -> dict[str, np.ndarray]:
    """The weights that are set, by name (what trajectory files store as `param.<name>`)."""
    return {name: np.asarray(getattr(params, name)) for name in PARAM_NAMES if getattr(params, name) is not None}


def params_from_arrays(arrays: dict[str, np.ndarray | Array]) -> TransformerParams:
    """Inverse of `params_to_arrays`; a name that is not a weight is a `ValueError` naming it."""
    unknown = sorted(set(arrays) - set(PARAM_NAMES))
    if unknown:
        raise ValueError(f"unknown weight(s) {unknown}; this gflow's TransformerParams has {list(PARAM_NAMES)}.")
    return TransformerParams(**{name: jnp.asarray(a) for name, a in arrays.items()})
