"""Flat-vector view of the parameters, for the ODE solvers.

Solvers work on one float64 vector (implicit solvers assemble a dense Jacobian of it). The layout
is a hashable description of the parameter shapes, so two calls with the same shapes share one
compiled solve.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..data import AbstractDataSource
from ._config import TransformerConfig
from ._params import TransformerParams, param_shapes


class ParamLayout(eqx.Module):
    """Names and shapes of the weights a config uses, in the order they are flattened."""

    names: tuple[str, ...] = eqx.field(static=True)
    shapes: tuple[tuple[int, ...], ...] = eqx.field(static=True)

    @classmethod
    def of(cls, config: TransformerConfig, spec: AbstractDataSource) -> ParamLayout:
        shapes = param_shapes(config, spec)  # in field order
        return cls(names=tuple(shapes), shapes=tuple(shapes.values()))

    @property
    def size(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def flatten(self, params: TransformerParams) -> Float[Array, " n_params"]:
        return jnp.concatenate([jnp.ravel(getattr(params, n)) for n in self.names])

    def unflatten(self, vec: Float[Array | np.ndarray, " n_params"]) -> TransformerParams:
        """Weights from one flat vector (a numpy vector is cut on the host and moved with `device_put`:
        no small program compiled per slice)."""
        on_host = isinstance(vec, np.ndarray)
        out, start = {}, 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            size = math.prod(shape)
            w = vec[start:start + size].reshape(shape)
            out[name] = jax.device_put(w) if on_host else w
            start += size
        return TransformerParams(**out)

    def unflatten_many(self, ys: Float[np.ndarray, "n n_params"]) -> TransformerParams:
        """`(n, n_params)` states on the host to parameters with a leading axis `n`.

        Reshaped in numpy, then moved to JAX once per weight (`device_put`: `jnp.asarray` and a vmapped
        `unflatten` compile a small program for every new shape, and every checkpoint of a run has
        a new number of rows)."""
        ys = np.asarray(ys, dtype=np.float64)
        out, start = {}, 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            size = math.prod(shape)
            out[name] = jax.device_put(ys[:, start:start + size].reshape((ys.shape[0], *shape)))
            start += size
        return TransformerParams(**out)

    def flatten_many(self, params: TransformerParams) -> Float[np.ndarray, "n n_params"]:
        """The inverse of `unflatten_many`, on the host."""
        rows = [np.asarray(getattr(params, n)) for n in self.names]
        return np.concatenate([w.reshape(w.shape[0], -1) for w in rows], axis=1)
