"""Previous-token and induction heads (Olsson et al. 2022; Edelman et al. 2024): probes of the two
mechanisms an induction circuit is made of, and the events of their forming.

- **previous-token score** of a first-layer head: the attention a query at position $t$ pays to
  position $t - 1$, averaged over the contexts and scored positions of the run's own loss (their
  exact law for `enumerate`);
- **induction score** of a second-layer head: the attention a query $x_t$ pays to the positions $s$
  whose *previous* token is $x_t$ ($x_{s-1} = x_t$: the tokens that followed earlier occurrences of
  the current one), averaged over the positions that have such keys.

Each score is compared with what uniform attention over the $t$ visible keys would give (`baseline`),
and a head has **formed** when it has gone half of the way from that baseline to 1 (the whole of its
attention): `(score - baseline) / (1 - baseline) = 1/2`. The rule is relative to the run's own
baseline and to full attention, so it does not depend on V, T or the initial scale. The event is timed
where the best head's normalised score crosses 1/2, interpolated in log time between saved points
(its uncertainty: half of that interval).
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..losses import SequenceData
from ..model import sequence_attention_layers
from ..record import Trajectory
from ._events import Event, sort_events

FORMED = 0.5
"""A head has formed when its score has gone this fraction of the way from uniform attention to 1."""


@dataclasses.dataclass(frozen=True)
class InductionProbes:
    """Per saved time: `previous_token` `(n, heads)` (layer 1), `induction` `(n, heads)` (layer 2; `None`
    for one-layer models), with the uniform-attention `previous_baseline` and `induction_baseline`."""

    times: np.ndarray
    loss: np.ndarray
    previous_token: np.ndarray
    induction: np.ndarray | None
    previous_baseline: float
    induction_baseline: float


def induction_probes(traj: Trajectory) -> InductionProbes:
    """The probes of `traj` under its own loss's contexts (a sequence loss: `enumerate`, `sampled` or
    `dataset`; the type-level losses hold no sequences to probe)."""
    if not isinstance(traj, Trajectory):
        raise ValueError(f"`traj` must be a Trajectory; got {type(traj).__name__}.")
    data = traj.loss_function().data
    if not isinstance(data, SequenceData):
        raise ValueError(f"the induction probes need a sequence loss (enumerate, sampled or dataset); this run used "
                         f"{traj.record.loss.method!r}.")
    tokens = np.asarray(data.tokens)
    N, T = tokens.shape
    w = np.asarray(data.weights) / np.sum(np.asarray(data.weights))
    rho = np.asarray(data.position_weights).copy()
    rho[0] = 0.0  # position 1 has no previous token
    if rho.sum() == 0:
        raise ValueError("the run scores no position after the first: no previous token to probe.")
    rho = rho / rho.sum()
    prev_weight = w[:, None] * rho[None, :]  # (N, T)
    # keys s <= t whose previous token is the query's token (s >= 1)
    match = np.zeros((N, T, T), bool)
    match[:, :, 1:] = tokens[:, :, None] == tokens[:, None, :-1]
    match &= np.tril(np.ones((T, T), bool))[None]
    has = match.any(axis=2)
    ind_weight = prev_weight * has
    ind_weight = ind_weight / max(ind_weight.sum(), 1e-300)
    positions = np.arange(1, T + 1)
    previous_baseline = float(np.sum(prev_weight / positions[None, :]))
    induction_baseline = float(np.sum(ind_weight * match.sum(axis=2) / positions[None, :]))
    scores = _scores(traj.params, jnp.asarray(tokens), traj.config, jnp.asarray(prev_weight),
                     jnp.asarray(ind_weight), jnp.asarray(match))
    prev, ind = (np.asarray(x) for x in scores)
    return InductionProbes(times=np.asarray(traj.times), loss=np.asarray(traj.loss), previous_token=prev,
                           induction=ind if traj.config.n_layers == 2 else None,
                           previous_baseline=previous_baseline, induction_baseline=induction_baseline)


@eqx.filter_jit
def _scores(params, tokens, config, prev_weight, ind_weight, match):
    def at(p):
        layers = sequence_attention_layers(p, tokens, config)
        a1 = layers[0]  # (N, K, T, T)
        prev = jnp.einsum("nt,nkt->k", prev_weight, _previous(a1))
        a2 = layers[-1]
        ind = jnp.einsum("nt,nkt->k", ind_weight, jnp.sum(jnp.where(match[:, None], a2, 0.0), axis=-1))
        return prev, ind

    return jax.lax.map(at, params)


def _previous(alpha):
    """`alpha[n, k, t, t - 1]` as `(N, K, T)` (0 at t = 0)."""
    sub = jnp.diagonal(alpha, offset=-1, axis1=2, axis2=3)  # (N, K, T - 1): query t + 1, key t
    return jnp.concatenate([jnp.zeros(sub.shape[:-1] + (1,), sub.dtype), sub], axis=-1)


def _crossing(times, values, level):
    """The first time `values` crosses `level` upwards, interpolated in log time, with half the
    bracketing interval as uncertainty; `None` if it never does."""
    above = np.flatnonzero(values >= level)
    if not above.size or above[0] == 0:
        return None
    j = above[0]
    t0, t1 = max(times[j - 1], times[j] * 1e-12), times[j]
    f = (level - values[j - 1]) / max(values[j] - values[j - 1], 1e-300)
    t = math.exp(math.log(t0) + f * (math.log(t1) - math.log(t0))) if t0 > 0 else t1
    return t, 0.5 * (t1 - t0)


def detect_induction_events(traj: Trajectory | None, probes: InductionProbes | None = None) -> list[Event]:
    """`previous_token_head` (a first-layer head formed) and, for two-layer models, `induction_head`
    (a second-layer head formed), each at most once, with the head and its scores in the details
    (`traj` may be `None` when `probes` are given)."""
    if probes is None:
        if traj is None:
            raise ValueError("give the trajectory, or its probes (`induction_probes(traj)`).")
        probes = induction_probes(traj)
    out = []
    for kind, scores, baseline in (("previous_token_head", probes.previous_token, probes.previous_baseline),
                                   ("induction_head", probes.induction, probes.induction_baseline)):
        if scores is None:
            continue
        normalised = (scores - baseline) / max(1.0 - baseline, 1e-300)
        best = normalised.max(axis=1)
        hit = _crossing(probes.times, best, FORMED)
        if hit is None:
            continue
        time, uncertainty = hit
        j = int(np.searchsorted(probes.times, time))
        head = int(np.argmax(normalised[min(j, len(best) - 1)]))
        out.append(Event(kind, time, 1, {"layer": 1 if kind == "previous_token_head" else 2, "head": head + 1,
                                         "final_score": float(scores[-1, head]), "baseline": baseline},
                         uncertainty=uncertainty, strength=float(best[-1])))
    return sort_events(out)


def position_maps(traj: Trajectory, index: int) -> list[np.ndarray]:
    """Per layer, the attention `(heads, T, T)` from query position to key position at saved index
    `index`, averaged over the contexts of the run's own (sequence) loss with their weights."""
    data = traj.loss_function().data
    if not isinstance(data, SequenceData):
        raise ValueError(f"position maps need a sequence loss; this run used {traj.record.loss.method!r}.")
    w = jnp.asarray(np.asarray(data.weights) / np.sum(np.asarray(data.weights)))
    layers = sequence_attention_layers(traj.params_at(index), data.tokens, traj.config)
    return [np.asarray(jnp.einsum("n,nkts->kts", w, a)) for a in layers]
