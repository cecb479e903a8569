"""Metrics along a trajectory, vectorised over the saved times.

Everything the stage detectors and figures read comes from one `Metrics` object: singular values
and stable ranks of the embedding and unembedding, attention activity, type-level attention
(for configs without positions), the focus index, and the loss with its log-time slope.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ..common import stored_filter_jit
from ..model import TransformerConfig, TransformerParams, type_scores, unembedding
from ..record import Trajectory
from ._attention import attention_statistics

OPEN_FRACTION = 0.25
"""A singular direction is "open" when its value exceeds this fraction of the largest one (a
direction still growing out of a saddle, at a few percent of the leading one, is not open yet)..."""
OPEN_GROWTH = 10.0
"""...and has grown this many times over its initial size (so an isotropic small initialisation,
where all singular values are comparable, counts as no open direction)."""


@dataclasses.dataclass(frozen=True)
class Metrics:
    """Per-time signals of a trajectory (`n` saved times; `K` heads; `V` tokens).

    - `sv_E`, `sv_U`, `sv_EU`: singular values of `W_E`, of the unembedding and of their product,
      largest first. The unembedding is the matrix the model reads (`gflow.model.unembedding`): `W_U`,
      or `W_E`ᵀ when the config is tied (`tied`), whose singular values are then those of `W_E`.
    - `stable_rank_E`, `stable_rank_U`: $\\|M\\|_F^2 / \\|M\\|_2^2$.
    - `open_directions`: open singular directions of `W_E` (see `OPEN_FRACTION`, `OPEN_GROWTH`).
    - `max_score`: largest |attention score| over heads and token pairs.
    - `qk_change`: $\\|(W_Q, W_K)(t) - (W_Q, W_K)(0)\\| / \\|(W_Q, W_K)(0)\\|$.
    - `pi`: `(V,)` the key masses uniform attention would give under the run's loss (the stationary
      law in the mean-field limit): the reference for attention gains.
    - `attention`: `(n, K, V, V)` the attention a query token $a$ pays key type $b$, averaged over the
      contexts the loss scores ($\\alpha(a, b) \\propto \\pi_b e^{score(a, b)}$ in the mean-field limit);
      `position_attention`: `(n, K, T, T)` the position map, for sequence losses (else `None`).
    - `key_mass`: `(n, K, V)` mass each key type receives, averaged over scored queries and contexts
      ($m_b = \\sum_a \\pi_a \\alpha(a, b)$ in the mean-field limit).
    - `focus`: `(n,)` focus index, the expected KL divergence of attention from uniform attention over
      the context, averaged over heads ($F = \\sum_a \\pi_a KL(\\alpha(a, \\cdot) \\| \\pi)$ in the
      mean-field limit); `focus_per_head`: `(n, K)`.
    - `loss`, `grad_norm`, `dloss_dlogt`: loss, gradient norm, and $dL / d\\log_{10} t$.
    - `labels`: the data source's token labels, for figures; `loss_method`: the loss the statistics follow.
    """

    times: np.ndarray
    pi: np.ndarray
    sv_E: np.ndarray
    sv_U: np.ndarray
    sv_EU: np.ndarray
    stable_rank_E: np.ndarray
    stable_rank_U: np.ndarray
    open_directions: np.ndarray
    max_score: np.ndarray
    qk_change: np.ndarray
    key_mass: np.ndarray | None
    focus: np.ndarray | None
    attention: np.ndarray | None
    position_attention: np.ndarray | None
    loss: np.ndarray
    grad_norm: np.ndarray
    dloss_dlogt: np.ndarray
    labels: tuple[str, ...] | None = None
    focus_per_head: np.ndarray | None = None
    loss_method: str | None = None
    tied: bool = False

    def token_labels(self) -> tuple[str, ...]:
        """The data source's token labels (`"0"`, `"1"`, ... when unknown)."""
        return self.labels if self.labels is not None else tuple(str(b) for b in range(len(self.pi)))

    def at(self, t: float) -> int:
        """Index of the saved time closest to `t` (in log time)."""
        if t <= 0 or not np.any(self.times > 0):
            return int(np.argmin(np.abs(self.times - t)))
        safe = np.maximum(self.times, self.times[self.times > 0].min() * 1e-3)
        return int(np.argmin(np.abs(np.log(safe) - np.log(max(t, safe[0])))))


def stable_rank(sv: np.ndarray) -> np.ndarray | np.floating:
    """$\\sum_i s_i^2 / s_1^2$ along the last axis of singular values (largest first)."""
    return (sv**2).sum(axis=-1) / np.maximum(sv[..., 0] ** 2, np.finfo(float).tiny)


def open_directions(sv: np.ndarray, fraction: float = OPEN_FRACTION, growth: float = OPEN_GROWTH) -> np.ndarray:
    """Count of singular values above `fraction` of the largest and `growth` times their initial value."""
    big = sv > fraction * sv[:, :1]
    grown = sv > growth * sv[:1]
    return (big & grown).sum(axis=1)


def log_time_slope(times: np.ndarray, y: np.ndarray) -> np.ndarray:
    """$dy / d\\log_{10} t$ by finite differences on the saved grid (0 at t = 0)."""
    out = np.zeros_like(y)
    pos = times > 0
    if pos.sum() >= 2:
        out[pos] = np.gradient(y[pos], np.log10(times[pos]))
    return out


@stored_filter_jit
def _max_scores(params: TransformerParams, config: TransformerConfig):
    """The largest |score| between token types at each saved time, from the model's own scores."""
    return jnp.max(jnp.abs(jax.vmap(lambda p: type_scores(p, config))(params)), axis=(1, 2, 3))


def finite_points(traj: Trajectory) -> int:
    """How many saved points of `traj`, from the first, have a finite loss and state."""
    finite = np.isfinite(traj.loss) & np.all(np.isfinite(traj.flat_params()), axis=1)
    return len(traj) if finite.all() else int(np.argmin(finite))


def unanalysable(traj) -> str | None:
    """Why the stage analysis cannot read `traj` (`None` when it can): it is not a `Trajectory`, or a
    saved point's loss or state is not finite (a run that overflowed keeps the point where it did,
    and an initialisation that overflows is the only point of its run)."""
    if not isinstance(traj, Trajectory):
        return f"`traj` must be a Trajectory (gflow.simulate, gflow.train or gflow.load); got {type(traj).__name__}"
    n = finite_points(traj)
    if n < len(traj):
        return (f"`traj` has {n} saved point(s) with a finite loss and state before its first non-finite one "
                f"({len(traj)} saved; status {traj.status.value}: {traj.message or 'no message'}); the stage "
                "analysis needs every point finite" + (f" (`traj.head({n})` holds those)" if n else ""))
    return None


def compute_metrics(traj: Trajectory) -> Metrics:
    """All per-time signals of `traj` (see `Metrics`); attention statistics are expectations under the
    loss the trajectory was computed on (`_attention.py`). A trajectory the analysis cannot read
    (`unanalysable`) is a `ValueError` saying why."""
    reason = unanalysable(traj)
    if reason is not None:
        raise ValueError(reason + ".")
    p = traj.params
    cfg: TransformerConfig = traj.config
    W_E, W_U = np.asarray(p.W_E), np.asarray(unembedding(p, cfg))
    sv_E = np.linalg.svd(W_E, compute_uv=False)
    sv_U = np.linalg.svd(W_U, compute_uv=False)
    sv_EU = np.linalg.svd(W_E @ W_U, compute_uv=False)
    qk = np.concatenate([np.asarray(p.W_Q).reshape(len(traj), -1), np.asarray(p.W_K).reshape(len(traj), -1)], axis=1)
    qk_change = np.linalg.norm(qk - qk[:1], axis=1) / max(np.linalg.norm(qk[0]), np.finfo(float).tiny)
    stats = {k: np.asarray(v) for k, v in attention_statistics(p, traj.loss_function()).items()}
    times = np.asarray(traj.times)
    loss = np.asarray(traj.loss)
    return Metrics(times=times, pi=stats["uniform_mass"][0], sv_E=sv_E, sv_U=sv_U, sv_EU=sv_EU,
                   stable_rank_E=stable_rank(sv_E), stable_rank_U=stable_rank(sv_U),
                   open_directions=open_directions(sv_E), max_score=np.asarray(_max_scores(p, cfg)),
                   qk_change=qk_change, key_mass=stats["key_mass"], focus=stats["focus"].mean(axis=1),
                   attention=stats["attention"], position_attention=stats.get("position_attention"), loss=loss,
                   grad_norm=np.asarray(traj.grad_norm), dloss_dlogt=log_time_slope(times, loss),
                   labels=tuple(traj.spec.labels), focus_per_head=stats["focus"],
                   loss_method=traj.record.loss.method, tied=cfg.tied)
