"""Probes and events of sparse high-order tasks (docs/tasks.md): how close the model is to each
restricted teacher, which block each head leans on, and when blocks are acquired, heads compete and
heads specialise.

- **block k acquired**: the loss falls half-way from the (k-1)-block level to the k-block level
  (`SparseLagSpec.block_levels`; half-way as for escapes: a plateau may sit a little off its level,
  since the model's class at a plateau is not exactly the k-block Bayes predictor). The details
  give the restricted teacher nearest to the model then, in mean KL
  $D_j = E\\,KL(p_j \\| q)$ over the contexts and scored queries, and when $D_k$ bottoms out.
  (Nearest-teacher changes alone do not time acquisitions: when the model leaves uniform
  predictions it nears every teacher with a block at once.)
- **leaning**: head h leans on block k when its attention to the block exceeds the block's share
  under uniform attention by at least `LEAN` (5% of the attention, the visible gain of the stage
  detector, `VISIBLE_MASS`) and by more than on any other block. The lean signal
  $s_{hk} = \\min(e_{hk} - LEAN, e_{hk} - \\max_{k' \\ne k} e_{hk'})$ of the excesses $e$ is continuous
  and is $\\ge 0$ exactly when h leans on k, so lean changes are crossings of it.
- **competition**: two or more heads lean on the same block.
- **specialisation**: the leaning heads cover two or more distinct blocks (at or after a competition,
  when there was one): heads begin to cooperate. Some blocks may still be shared then; the details
  say which, and whether the run ends fully specialised (no block shared).

Times are crossings between saved points, narrowed by re-solving the flow (`_refine.py`), as for
the stage events.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

from ..data import AbstractDataSource, SparseLagSpec, block_lags
from ..losses import MAX_ENUMERATED_SEQUENCES
from ..model import sequence_logits
from ..record import Trajectory
from ._events import Event, sort_events
from ._lag_blocks import lag_block_attention
from ._metrics import compute_metrics
from ._refine import Refiner
from ._stages import VISIBLE_MASS

LEAN = VISIBLE_MASS
"""A head leans on a block when it pays it this much more than uniform attention would (and more
than to any other block, over uniform)."""


def _check(traj: Trajectory | None, spec: AbstractDataSource) -> None:
    if not isinstance(spec, SparseLagSpec):
        raise ValueError(f"`spec` must be a SparseLagSpec; got {type(spec).__name__}.")
    if traj is None:
        return
    if not isinstance(traj, Trajectory):
        raise ValueError(f"`traj` must be a Trajectory; got {type(traj).__name__}.")
    if traj.spec.V != spec.V or getattr(traj.spec, "T", None) != spec.T:
        raise ValueError(f"`traj` was computed on a source with V = {traj.spec.V}, T = {getattr(traj.spec, 'T', None)};"
                         f" `spec` has V = {spec.V}, T = {spec.T}.")


def restricted_teacher_kl(traj: Trajectory, spec: SparseLagSpec) -> Float[np.ndarray, "n K_plus_1"]:
    """`D[i, k]`: the mean KL divergence $KL(p_k \\| q)$ from the teacher restricted to blocks 1..k
    (`spec.restrict(k)`, k = 0..K) to the model's prediction q at saved time i, averaged over every
    context (their exact law under `spec`) and over the scored queries after the burn-in. Exact: it
    enumerates the $V^T$ contexts (the `enumerate` budget applies)."""
    _check(traj, spec)
    tokens, prob, _ = spec.sequence_law(MAX_ENUMERATED_SEQUENCES)
    L, T = spec.L, spec.T
    rho = spec.position_weights()[L - 1:]
    if rho.sum() == 0:
        raise ValueError("`spec` scores no query after the burn-in (positions='last' needs T >= L).")
    rho = rho / rho.sum()
    windows = np.stack([tokens[:, t - L:t] for t in range(L, T + 1)], axis=1)  # (N, T - L + 1, L)
    flat = windows.reshape(-1, L)
    log_p = np.stack([np.log(np.asarray(spec.restrict(k).next_token_probs(flat))).reshape(windows.shape[:2] + (-1,))
                      for k in range(spec.K + 1)])  # (K + 1, N, T - L + 1, V)
    weight = jnp.asarray(prob[:, None] * rho[None, :])
    log_p = jnp.asarray(log_p)
    tokens = jnp.asarray(tokens)
    config = traj.config

    @jax.jit
    def divergences(params):
        log_q = jax.nn.log_softmax(sequence_logits(params, tokens, config)[:, L - 1:], axis=-1)
        kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q[None]), axis=-1)  # (K + 1, N, positions)
        return jnp.einsum("knp,np->k", kl, weight)

    p = traj.params
    return np.asarray(jax.lax.map(divergences, p))


def uniform_block_share(spec: SparseLagSpec) -> Float[np.ndarray, " K"]:
    """The attention each block gets from uniform attention, averaged as `lag_block_attention` averages
    (a query predicting $x_{t+1}$ sees t positions)."""
    L, T = spec.L, spec.T
    rho = spec.position_weights()[L - 1:]
    rho = rho / rho.sum()
    return np.array([sum(w * len(lags) / t for w, t in zip(rho, range(L, T + 1), strict=True))
                     for lags in block_lags(spec.spans, spec.stride)])


def lean_signal(mass: Float[np.ndarray, "n heads K"], share: Float[np.ndarray, " K"]) -> Float[np.ndarray, "n heads K"]:
    """$s_{hk}$ of the module docstring: $\\ge 0$ exactly when head h leans on block k."""
    excess = mass - share
    K = excess.shape[-1]
    if K == 1:
        return excess - LEAN
    others = np.stack([np.delete(excess, k, axis=-1).max(axis=-1) for k in range(K)], axis=-1)
    return np.minimum(excess - LEAN, excess - others)


@dataclasses.dataclass(frozen=True)
class LagProbes:
    """The sparse-task signals of a run at its saved times: the loss, each head's attention to each
    block (`mass`, with the uniform `share`), the KL to each restricted teacher (`kl`, k = 0..K), and
    the class levels (`levels`, k = 0..K, from `SparseLagSpec.block_levels`)."""

    times: np.ndarray
    loss: np.ndarray
    mass: np.ndarray
    share: np.ndarray
    kl: np.ndarray
    levels: list[float]
    position_attention: np.ndarray | None

    @property
    def leaning(self) -> np.ndarray:
        """`(n, heads)`: the block (0-based) each head leans on, or -1."""
        s = lean_signal(self.mass, self.share)
        return np.where(s.max(axis=-1) >= 0, s.argmax(axis=-1), -1)


def lag_probes(traj: Trajectory, spec: SparseLagSpec) -> LagProbes:
    """All the sparse-task signals of `traj` (see `LagProbes`)."""
    _check(traj, spec)
    m = compute_metrics(traj)
    return LagProbes(times=np.asarray(traj.times), loss=np.asarray(traj.loss), mass=lag_block_attention(m, spec),
                     share=uniform_block_share(spec), kl=restricted_teacher_kl(traj, spec), levels=spec.block_levels(),
                     position_attention=m.position_attention)


def _shared(assignment: dict[int, int]) -> list[int]:
    blocks = list(assignment.values())
    return sorted({k for k in blocks if blocks.count(k) >= 2})


def _first(condition: np.ndarray, start: int = 0) -> int | None:
    hits = np.flatnonzero(condition[start:])
    return int(hits[0]) + start if len(hits) else None


class _LagDetector:
    def __init__(self, traj: Trajectory | None, spec: SparseLagSpec, probes: LagProbes):
        self.p, self.spec = probes, spec
        self.t = probes.times
        self.loss_refiner = Refiner(traj, lambda sub: np.asarray(sub.loss))
        self.mass_refiner = Refiner(traj, lambda sub: lag_block_attention(compute_metrics(sub), spec))

    def acquisitions(self) -> list[Event]:
        p, out = self.p, []
        for k in range(1, self.spec.K + 1):
            level = 0.5 * (p.levels[k - 1] + p.levels[k])
            i = _first(p.loss <= level)
            if i is None or i == 0:
                continue
            time, unc = self.loss_refiner.crossing(self.t, p.loss, i, level, lambda loss: loss)
            j = int(np.argmin(p.kl[:, k]))
            nearest = int(np.argmin(p.kl[i]))
            out.append(Event("block_acquired", time, 1, {
                "block": k, "level": p.levels[k], "level_before": p.levels[k - 1], "nearest_teacher": nearest,
                "kl_min": float(p.kl[j, k]), "kl_min_time": float(self.t[j]), "kl_bottoms_out": j < len(self.t) - 1},
                uncertainty=unc, strength=float(p.levels[k - 1] - p.levels[k])))
        return out

    def _lean_change(self, i: int, head_blocks: list[tuple[int, int]]) -> tuple[float, float]:
        """The time, in (t[i-1], t[i]], at which one of the (head, block) lean signals changed sign."""
        s = lean_signal(self.p.mass, self.p.share)
        for h, k in head_blocks:
            if (s[i, h, k] >= 0) != (s[i - 1, h, k] >= 0):
                share = self.p.share
                return self.mass_refiner.crossing(self.t, s[:, h, k], i, 0.0,
                                                  lambda M, h=h, k=k: lean_signal(M, share)[:, h, k])
        return float(self.t[i]), 0.5 * float(self.t[i] - self.t[i - 1])

    def competition_and_specialisation(self) -> list[Event]:
        lean = self.p.leaning
        H = lean.shape[1]
        shared = np.array([any(np.sum(row == k) >= 2 for k in set(row.tolist()) if k >= 0) for row in lean])
        distinct = np.array([len({int(k) for k in row if k >= 0}) >= 2 for row in lean])
        out = []
        c = _first(shared)
        if c is not None and c > 0:
            block = next(k for k in set(lean[c].tolist()) if k >= 0 and np.sum(lean[c] == k) >= 2)
            heads = [h for h in range(H) if lean[c, h] == block]
            time, unc = self._lean_change(c, [(h, block) for h in heads])
            out.append(Event("competition", time, 1, {
                "block": block + 1, "heads": [h + 1 for h in heads],
                "mass": [float(self.p.mass[c, h, block]) for h in heads], "share": float(self.p.share[block])},
                uncertainty=unc, strength=float(len(heads))))
        s = _first(distinct, c if c is not None else 0)
        if s is not None and s > 0:
            pairs = [(h, int(k)) for h in range(H) for k in {int(lean[s - 1, h]), int(lean[s, h])} if k >= 0]
            time, unc = self._lean_change(s, pairs)
            assignment = {h + 1: int(lean[s, h]) + 1 for h in range(H) if lean[s, h] >= 0}
            final = {h + 1: int(lean[-1, h]) + 1 for h in range(H) if lean[-1, h] >= 0}
            out.append(Event("specialisation", time, 1, {
                "heads_to_blocks": assignment, "after_competition": c is not None,
                "shared_blocks": _shared(assignment), "final_heads_to_blocks": final,
                "shared_at_end": _shared(final), "blocks_covered_at_end": sorted(set(final.values()))},
                uncertainty=unc, strength=float(len(assignment))))
        return out


def detect_lag_events(traj: Trajectory | None, spec: AbstractDataSource,
                      probes: LagProbes | None = None) -> list[Event]:
    """The events of a sparse-task run (module docstring): blocks acquired, competition, specialisation,
    in time order. `spec` must be a `SparseLagSpec`; `probes`: `lag_probes(traj, spec)`, if already
    computed; with `traj=None` (signals from elsewhere) the times are interpolated between saved
    points instead of re-solved."""
    _check(traj, spec)
    if probes is None:
        if traj is None:
            raise ValueError("give `traj` or `probes`.")
        probes = lag_probes(traj, spec)
    d = _LagDetector(traj, spec, probes)
    return sort_events(d.acquisitions() + d.competition_and_specialisation())
