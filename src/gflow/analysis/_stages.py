"""Marking the stages of learning on a trajectory: condensation, focus, dilution, plateaus, escapes.

Every detector reads the per-time signals of `Metrics` on the saved grid, so event times are saved
times (use a denser save grid for finer times). Thresholds are arguments with defaults chosen on
the focus–dilution setting and explained below; they are relative to the run's own scales wherever
a natural scale exists.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .._trajectory import Trajectory
from ._metrics import Metrics, compute_metrics

EVENT_KINDS = ("plateau", "condensation", "focus_onset", "focus_peak", "dilution", "escape")


@dataclasses.dataclass(frozen=True)
class Event:
    """A stage event: its `kind`, `time`, `cycle` (number of open embedding directions, at least 1)
    and `details` (kind-specific numbers, all plain Python values)."""

    kind: str
    time: float
    cycle: int
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


def _cycle(m: Metrics, i: int) -> int:
    # Cycle k is the stretch of time during which k embedding directions are open.
    return int(max(1, m.open_directions[i]))


def find_plateaus(m: Metrics, plateau_slope: float = 0.03, min_decades: float = 0.2) -> list[tuple[int, int]]:
    """Index ranges `(start, end)` (inclusive) where the loss is flat in log time.

    Flat means $|dL/d\\log_{10} t|$ below `plateau_slope` times the run's total loss drop (per
    decade): 3% catches the saddles of the demo, whose escapes drop the loss by 10-80% of the total
    within half a decade. Runs shorter than `min_decades` are noise between two drops, not saddles.
    """
    drop = max(m.loss[0] - m.loss.min(), np.finfo(float).tiny)
    pos = np.flatnonzero(m.times > 0)
    flat = np.zeros(len(m.times), dtype=bool)
    flat[pos] = np.abs(m.dloss_dlogt[pos]) < plateau_slope * drop
    if len(pos) and pos[0] > 0 and flat[pos[0]]:
        flat[: pos[0]] = True  # t = 0 belongs to a plateau that starts at the first positive time
    out, i = [], 0
    while i < len(flat):
        if not flat[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(flat) and flat[j + 1]:
            j += 1
        t_lo = m.times[max(i, pos[0] if len(pos) else i)]
        if t_lo > 0 and np.log10(m.times[j] / t_lo) >= min_decades:
            out.append((i, j))
        i = j + 1
    return out


def detect_stages(traj: Trajectory | Metrics, *, stable_rank_tol: float = 0.05, norm_growth: float = 10.0,
                  frozen_qk: float = 0.1, focus_onset: float = 0.01, dilution_fraction: float = 0.3,
                  gain_fraction: float = 0.2, plateau_slope: float = 0.03, min_decades: float = 0.2) -> list[Event]:
    """Detect the stages of learning along `traj` (or on precomputed `Metrics`).

    **Thresholds** (defaults in brackets):

    - `stable_rank_tol` [0.05]: condensation needs stable ranks of `W_E` and `W_U` below 1 + this
      (rank one up to 5% of the leading direction's energy)...
    - `norm_growth` [10]: ...after both norms grew this many times (so a rank-one-looking small
      initialisation does not count)...
    - `frozen_qk` [0.1]: ...and attention counts as frozen if `W_Q`, `W_K` moved less than 10% of
      their initial norm by then (reported either way).
    - `focus_onset` [0.01 nats]: the focus index first exceeds this (1% of a nat: attention has
      measurably left the frequency-weighted uniform average).
    - `dilution_fraction` [0.3]: dilution is the focus index falling this fraction below its running
      peak: a 30% fall is far above the wiggles of a focus that is still building.
    - `gain_fraction` [0.2]: at a focus peak, a key token "gained" mass if its gain $m_b - \\pi_b$ is at
      least 20% of the largest gain.
    - `plateau_slope`, `min_decades`: see `find_plateaus`.

    **Returns:** events sorted by time (plateaus at their start).
    """
    m = traj if isinstance(traj, Metrics) else compute_metrics(traj)
    events: list[Event] = []
    n = len(m.times)

    # --- condensation -----------------------------------------------------------------------
    norm_E, norm_U = np.linalg.norm(m.sv_E, axis=1), np.linalg.norm(m.sv_U, axis=1)
    cond = ((m.stable_rank_E < 1 + stable_rank_tol) & (m.stable_rank_U < 1 + stable_rank_tol)
            & (norm_E > norm_growth * norm_E[0]) & (norm_U > norm_growth * norm_U[0]))
    if cond.any():
        i = int(np.argmax(cond))
        events.append(Event("condensation", float(m.times[i]), _cycle(m, i), {
            "stable_rank_E": float(m.stable_rank_E[i]), "stable_rank_U": float(m.stable_rank_U[i]),
            "norm_growth_E": float(norm_E[i] / norm_E[0]), "norm_growth_U": float(norm_U[i] / norm_U[0]),
            "qk_change": float(m.qk_change[i]), "attention_frozen": bool(m.qk_change[i] < frozen_qk),
            "max_score": float(m.max_score[i])}))

    # --- focus and dilution -----------------------------------------------------------------
    if m.focus is not None:
        F = m.focus
        above = np.flatnonzero(F > focus_onset)
        if above.size:
            i = int(above[0])
            events.append(Event("focus_onset", float(m.times[i]), _cycle(m, i),
                                {"focus_index": float(F[i]), "max_score": float(m.max_score[i])}))
            start = i
            while start < n:
                # Track the running peak until F falls `dilution_fraction` below it.
                peak, j = start, start
                diluted = None
                while j < n:
                    if F[j] > F[peak]:
                        peak = j
                    if F[j] < (1 - dilution_fraction) * F[peak]:
                        diluted = j
                        break
                    j += 1
                if diluted is None:
                    # Final segment: report the peak only if focus rose again after a dilution, at the
                    # first time F is within 1% of its final maximum (F converges, it does not peak).
                    seg = F[start:]
                    if start > i and seg.max() - seg.min() > focus_onset:
                        peak = start + int(np.argmax(seg >= seg.max() - 0.01 * abs(seg.max())))
                        events.append(_focus_peak(m, peak, gain_fraction, final=True))
                    break
                events.append(_focus_peak(m, peak, gain_fraction, final=False))
                focused = events[-1].details["gained_tokens"]
                mass = m.key_mass[:, :, focused].sum(axis=-1).mean(axis=1)
                events.append(Event("dilution", float(m.times[diluted]), _cycle(m, diluted), {
                    "focus_index": float(F[diluted]), "peak_focus_index": float(F[peak]),
                    "fall_fraction": float(1 - F[diluted] / F[peak]), "focused_tokens": focused,
                    "focused_mass_at_peak": float(mass[peak]), "focused_mass": float(mass[diluted])}))
                # The next focus builds from the bottom of the dilution.
                k = diluted
                while k + 1 < n and F[k + 1] <= F[k]:
                    k += 1
                start = k + 1 if k + 1 < n else n

    # --- plateaus and escapes ---------------------------------------------------------------
    plateaus = find_plateaus(m, plateau_slope, min_decades)
    for p, (a, b) in enumerate(plateaus):
        events.append(Event("plateau", float(m.times[a]), _cycle(m, b), {
            "start": float(m.times[a]), "end": float(m.times[b]), "loss": float(m.loss[b]), "start_index": a,
            "end_index": b, "final": b == n - 1}))
        if b == n - 1:
            continue
        nxt = plateaus[p + 1][0] if p + 1 < len(plateaus) else n - 1
        # Directions open while the state sits on the plateau, against those open once it settles.
        before, after = int(m.open_directions[a]), int(m.open_directions[nxt])
        details = {"from_plateau": p, "loss_before": float(m.loss[b]), "loss_after": float(m.loss[nxt]),
                   "open_before": before, "open_after": after, "rank_increment": after - before,
                   "new_singular_values": [float(s) for s in m.sv_E[nxt, before:after]],
                   "settled_at": float(m.times[nxt])}
        events.append(Event("escape", float(m.times[b]), _cycle(m, b), details))
    order = {k: r for r, k in enumerate(EVENT_KINDS)}
    return sorted(events, key=lambda e: (e.time, order[e.kind]))


def _focus_peak(m: Metrics, i: int, gain_fraction: float, final: bool) -> Event:
    mass = m.key_mass[i].mean(axis=0)  # average over heads
    gain = mass - m.pi
    top = gain.max()
    gained = [int(b) for b in np.argsort(-gain) if gain[b] > 0 and gain[b] >= gain_fraction * top]
    rank = {int(b): r + 1 for r, b in enumerate(np.argsort(-m.pi, kind="stable"))}
    ranks = [rank[b] for b in gained]
    return Event("focus_peak", float(m.times[i]), _cycle(m, i), {
        "focus_index": float(m.focus[i]), "gained_tokens": gained, "frequency_ranks": ranks,
        "gains": [float(gain[b]) for b in gained], "frequency_ordered": ranks == sorted(ranks),
        "key_mass": [float(x) for x in mass], "final": final})


def _describe(e: Event) -> str:
    d = e.details
    if e.kind == "plateau":
        return f"t in [{d['start']:.3g}, {d['end']:.3g}], loss {d['loss']:.5f}" + (" (final)" if d["final"] else "")
    if e.kind == "condensation":
        frozen = "frozen" if d["attention_frozen"] else "NOT frozen"
        return (f"stable ranks E {d['stable_rank_E']:.3f}, U {d['stable_rank_U']:.3f}; attention {frozen} "
                f"(|dW_QK|/|W_QK(0)| = {d['qk_change']:.2g})")
    if e.kind == "focus_onset":
        return f"focus index {d['focus_index']:.3g}, max |score| {d['max_score']:.3g}"
    if e.kind == "focus_peak":
        toks = ", ".join(f"{b} (rank {r}, +{g:.3f})" for b, r, g in zip(d["gained_tokens"], d["frequency_ranks"],
                                                                       d["gains"], strict=True))
        order = "frequency-ordered" if d["frequency_ordered"] else "not frequency-ordered"
        return f"F = {d['focus_index']:.3f}; gained: {toks}; {order}" + (" (converged)" if d["final"] else "")
    if e.kind == "dilution":
        return (f"F {d['peak_focus_index']:.3f} -> {d['focus_index']:.3f} (-{100 * d['fall_fraction']:.0f}%); "
                f"mass of tokens {d['focused_tokens']}: {d['focused_mass_at_peak']:.3f} -> {d['focused_mass']:.3f}")
    if e.kind == "escape":
        sv = ", ".join(f"{s:.3g}" for s in d["new_singular_values"])
        inc = (f"rank +{d['rank_increment']} (new singular value {sv})" if d["rank_increment"] > 0 
               else "no new direction")
        return f"loss {d['loss_before']:.5f} -> {d['loss_after']:.5f}; {inc}"
    return str(d)


def stage_table(events: list[Event]) -> str:
    """A Markdown table of the events, one row each, in time order."""
    rows = ["| time | cycle | event | details |", "|---:|---:|---|---|"]
    rows += [f"| {e.time:.4g} | {e.cycle} | {e.kind} | {_describe(e)} |" for e in events]
    return "\n".join(rows)
