"""Probes of sparse high-order tasks (docs/tasks.md): how much attention each head pays to each lag
block of a `SparseLagSpec` teacher."""

from __future__ import annotations

import numpy as np
from jaxtyping import Float

from ..data import SparseLagSpec, block_lags
from ._metrics import Metrics


def lag_block_attention(m, spec: SparseLagSpec) -> Float[np.ndarray, "n heads K"]:
    """`mass[i, h, k]`: from the run's `Metrics` `m` (checked here, so that a `Trajectory` gets a message, not an
    AttributeError), the attention head h pays, at saved time i, to the positions of lag block k,
    averaged over the contexts and the scored queries after the burn-in (queries inside it cannot
    see every block). A query predicting $x_{t+1}$ sees lag j at position $t + 1 - j$. From the
    position map of the run's own (sequence) loss, so exact under `enumerate`."""
    if not isinstance(spec, SparseLagSpec):
        raise ValueError(f"`spec` must be a SparseLagSpec; got {type(spec).__name__}.")
    if not isinstance(m, Metrics):
        raise ValueError(f"`m` must be the run's Metrics (`gflow.analysis.compute_metrics(traj)`); got "
                         f"{type(m).__name__}.")
    if m.position_attention is None:
        raise ValueError("`m` has no position map: compute the metrics of a run with a sequence loss "
                         "('enumerate', 'sampled' or 'dataset').")
    A = m.position_attention  # (n, heads, T, T): query index t - 1 predicts x_(t+1)
    T, L = A.shape[-1], spec.L
    if T != spec.T:
        raise ValueError(f"`m` comes from a run with T = {T}, `spec` has T = {spec.T}.")
    rho = spec.position_weights()[L - 1:]
    rho = rho / rho.sum()
    out = np.zeros(A.shape[:2] + (spec.K,))
    for k, lags in enumerate(block_lags(spec.spans, spec.stride)):
        for weight, t in zip(rho, range(L, T + 1), strict=True):
            out[:, :, k] += weight * A[:, :, t - 1, [t - j for j in lags]].sum(axis=-1)
    return out
