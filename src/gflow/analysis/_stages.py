"""Marking the stages of learning: escapes, plateaus, direction openings, condensation, focus, dilution.

Each detector reads a signal of `Metrics` and decides from the signal itself, its own peak height,
its own range or float64 round-off, never from one run's numbers (docs/analysis.md):

- **escape**: a drop of the loss is a peak of its descent rate $r = -dL/d\\ln t$. Two drops are
  distinct when the rate falls by a third between them (`DISTINCT`: the descent visibly slows). A
  drop spans the times where its rate exceeds a tenth of its peak (`EXTENT`); its levels are read at
  the flattest points before and after it; its time is when the loss is half-way between them; its
  strength is the loss it releases. A drop still under way at the end of the run, or releasing no
  more than round-off (for stochastic runs: the loss's own fluctuations), is not an escape.
- **plateau**: the stretches between drops; the slowest point of each stands for its saddle.
- **opening**: a singular direction of `W_E` grows: a peak of $d\\ln\\sigma_k/d\\ln t$ across which
  $\\sigma_k$ grows by at least a factor $e$, from below to above 1% of the leading direction's energy
  (`OPEN_ENERGY`), ending at least $e$ times above the largest initial singular value (so that the
  reshuffling of an isotropic small initialisation is not an opening); timed when $\\ln\\sigma_k$ is
  half-way. Each escape lists the directions that open during it, and a cycle is the number of
  directions opened so far (a plateau's: at its slowest point, its saddle).
- **condensation**: the first escape that opens a direction, with the stable ranks of `W_E`, `W_U`
  when it ends, and whether attention moved less than 1% as much as the embedding (`FROZEN`). It is
  a rank-one condensation only when that escape opens one direction: the stable rank stays near 1
  while a second direction opens at a third of the first's size (finite-T losses), so the count of
  openings decides, and a condensation opening more is marked weak (not the paper's rank one).
- **focus onset / peak / dilution**, when the focus index $F$ is visible on its natural scale
  ($\\ge 1\\%$ of $\\ln V$): peaks confirmed by a fall of at least 3% on both sides (`FOCUS_FALL`:
  above the solver's error, visible on a panel); the onset when $F$ first reaches a tenth of its
  first peak; a dilution at the half-fall from a peak to the lowest point before the next one. A key
  token's attention mass can spike while $F$ does not (finite-$T$ losses): a gain over uniform
  attention of at least 5% of the attention (`VISIBLE_MASS`) that falls to half or less on both
  sides (`MASS_SPIKE`) is a focus peak too, with its dilution. A final rise of $F$ that levels off is
  reported as the focus it settles at, timed half-way up that rise.
- **resolved**: an escape must release more than the flow's `rtol` times the loss (below that
  the run does not claim to resolve it; `resolved_loss_change`).
- **weak**: an escape releasing less than 1% of its stage's drop (the first escape, condensation:
  of the run's total drop; every later one: of the drop left after it, the scale on which the
  staircase of context learning is seen, whatever condensation released), a focus peak or dilution
  whose fall is under 10%, or a dilution that does not reduce the focused tokens' mass: below what a
  figure of the run shows clearly.

Times come from root finding on the re-solved flow between saved points (`_refine.py`), with an
uncertainty, so they do not depend on the save grid.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..record import Trajectory
from ._events import Event, sort_events
from ._metrics import Metrics, compute_metrics, log_time_slope
from ._refine import Refiner
from ._signals import ROUNDOFF, crossing, fluctuation_scale, log_time_rate, peaks
from ._verdict import final_verdict

DISTINCT = 2 / 3
MASS_SPIKE = 0.5
EXTENT = 0.1
VISIBLE_DROP = 0.01
OPEN_GROWTH = 1.0  # in ln(sigma): a factor e
OPEN_ENERGY = 0.1  # sigma_k / sigma_1 after the opening: 1% of the leading direction's energy
VISIBLE_FOCUS = 0.01  # of ln V
VISIBLE_MASS = 0.05  # of the attention: a key token's gain over uniform attention, as FOCUS_FALL
ONSET = 0.1
FOCUS_FALL = 0.97
WEAK_FALL = 0.10
FROZEN = 0.01
SAME_FREQUENCY = 1e-6  # relative: tokens this close in frequency are symmetric (exact ties, up to the law's round-off)


@dataclasses.dataclass(frozen=True)
class Episode:
    """A rise of an integrated signal X (a peak of its rate): its span [start, end], its peak, the
    flattest points before and after it (`before`, `after`: where the rate is smallest between it and
    its neighbouring rises or the ends of the run), and its change `X[after] - X[before]`. Levels are
    read at the flattest points, so they barely depend on the save grid."""

    peak: int
    start: int
    end: int
    confirmed: bool
    change: float
    before: int = 0
    after: int = 0

    def level(self, X: np.ndarray, fraction: float = 0.5) -> float:
        return float(X[self.before] + fraction * (X[self.after] - X[self.before]))

    def level_uncertainty(self, X: np.ndarray, fraction: float = 0.5) -> float:
        """How much `level` moves when the flattest points move by one saved point."""
        return float((1 - fraction) * _spread(X, self.before) + fraction * _spread(X, self.after))


def _spread(X: np.ndarray, i: int) -> float:
    """How much X changes from saved point `i` to a neighbour: the grid's uncertainty of a level read there."""
    return float(max(abs(X[j] - X[i]) for j in (max(i - 1, 0), min(i + 1, len(X) - 1))))


def episodes(times: np.ndarray, X: np.ndarray) -> list[Episode]:
    """The rises of `X` in log time: peaks of $dX/d\\ln t$ separated by a fall to `DISTINCT` of the peak,
    each spanning the points where the rate exceeds `EXTENT` of its peak, and never past the lowest
    rate between it and a neighbouring rise."""
    rate = log_time_rate(times, X)
    found = peaks(rate, DISTINCT, floor=0.0)
    out = []
    for j, p in enumerate(found):
        lo = p.left_base if j == 0 else found[j - 1].index + int(np.argmin(rate[found[j - 1].index:p.index + 1]))
        hi = p.right_base if j == len(found) - 1 else p.index + int(np.argmin(rate[p.index:found[j + 1].index + 1]))
        level = EXTENT * rate[p.index]
        a = p.index
        while a > lo and rate[a - 1] > level:
            a -= 1
        b = p.index
        while b < hi and rate[b + 1] > level:
            b += 1
        a, b = max(a - 1, lo), min(b + 1, hi)
        before = lo + int(np.argmin(np.abs(rate[lo:p.index + 1])))
        after = p.index + int(np.argmin(np.abs(rate[p.index:hi + 1])))
        out.append(Episode(p.index, a, b, p.confirmed and b > a, float(X[after] - X[before]), before, after))
    return out


def resolved_loss_change(traj: Trajectory | None, loss: np.ndarray) -> float:
    """The smallest loss change a flow's escape may be: its `rtol` times the loss's size. The run was
    asked for states to that relative accuracy; a drop below it (a drift of 3.6e-9 nats on a loss
    of 1.39 at rtol 1e-6, say) is below what the run claims to resolve, and below anything its
    figures or tables show. 0 for discrete runs (their noise floor is their own) and bare metrics."""
    if traj is None or traj.record.solver is None or traj.record.training is not None:
        return 0.0
    return float(traj.record.solver.rtol) * float(np.max(np.abs(loss)))


class _Detector:
    def __init__(self, m: Metrics, traj: Trajectory | None, resolution: float = 0.0):
        self.m, self.traj = m, traj
        self.refiner = Refiner(traj, compute_metrics)
        self.t = m.times
        stochastic = traj is not None and traj.record.training is not None and traj.record.training.batch_size
        L = m.loss
        self.loss_noise = max(ROUNDOFF * float(np.max(np.abs(L))), 10 * fluctuation_scale(L) if stochastic else 0.0,
                              resolution)
        self.total_drop = float(L[0] - L.min())
        self.openings: list[dict] = []

    def cycle(self, time: float) -> int:
        return max(1, sum(o["time"] < time for o in self.openings))

    # --- escapes and plateaus -------------------------------------------------------------------
    def drops(self) -> tuple[list[tuple[Episode, float, float]], Episode | None]:
        out, under_way = [], None
        for e in episodes(self.t, -self.m.loss):
            if e.change <= self.loss_noise:
                continue
            if not e.confirmed:
                under_way = e if e.end == len(self.t) - 1 else under_way
                continue
            L = self.m.loss
            level = e.level(L)
            i = crossing(self.t, L, level, e.before, e.after)
            time, unc = self.refiner.crossing(self.t, L, i, level, lambda m: m.loss, e.level_uncertainty(L))
            out.append((e, time, unc))
        return out, under_way

    def find_openings(self) -> None:
        sv = np.maximum(self.m.sv_E, np.finfo(float).tiny)
        for k in range(sv.shape[1]):
            X = np.log(sv[:, k])
            for e in episodes(self.t, X):
                closed_before = sv[e.start, k] < OPEN_ENERGY * max(sv[e.start, 0], sv[e.end, 0])
                # open: a share of the leading direction's energy, and beyond anything the initialisation made
                open_after = sv[e.end, k] >= max(OPEN_ENERGY * sv[e.end, 0], np.e * sv[0].max())
                if not (e.confirmed and e.change >= OPEN_GROWTH and closed_before and open_after):
                    continue
                level = e.level(X)
                i = crossing(self.t, X, level, e.before, e.after)
                time, unc = self.refiner.crossing(self.t, X, i, level, lambda m, k=k: np.log(m.sv_E[:, k]),
                                                  e.level_uncertainty(X))
                self.openings.append({"direction": k + 1, "time": time, "uncertainty": unc,
                                      "from": float(sv[e.before, k]), "to": float(sv[e.after, k]),
                                      "start": e.start, "end": e.end})
        self.openings.sort(key=lambda o: o["time"])

    def slow_start(self, first_drop: Episode, b: int) -> bool:
        """Whether the flow is slow before its first drop, when the run starts at t = 0: there the
        descent rate $-dL/d\\ln t = t\\,|\\nabla L|^2$ vanishes however fast the loss falls, so the
        stretch before the drop's extent is a plateau only if the loss's own rate $|\\nabla L|^2$ falls
        in it below `EXTENT` of its peak in the drop (the fraction that bounds a drop). A small
        initialisation's saddle at the origin passes by orders of magnitude (its gradient 2-9% of the
        drop's, squared 1e-4 to 1e-2); a full block whose LayerNorm makes the first gradient the
        run's largest, or a gamma = 1 initialisation, does not."""
        speed = self.m.grad_norm**2
        peak = speed[first_drop.start: first_drop.end + 1].max()
        return bool(peak == 0 or speed[: b + 1].min() < EXTENT * peak)  # no gradient recorded: as before

    def escapes_and_plateaus(self) -> list[Event]:
        t, L = self.t, self.m.loss
        drops, under_way = self.drops()
        events, used = [], set()
        bounds = [0] + [x for e, _, _ in drops for x in (e.start, e.end)] + [len(t) - 1]
        rate = -log_time_rate(t, L)
        plateau_before = {}  # drop p -> the number of the plateau event just before it, where there is one
        for p in range(len(drops) + 1):
            a, b = bounds[2 * p], bounds[2 * p + 1]
            final = p == len(drops)
            if b <= a and not final:
                continue
            if p == 0 and not final and t[a] == 0 and not self.slow_start(drops[0][0], b):
                continue
            b = max(a, b)
            plateau_before[p] = len(plateau_before)
            inner = [i for i in range(a, b + 1) if t[i] > 0] or [a]
            slowest = min(inner, key=lambda i: abs(rate[i]))
            # its cycle is its saddle's (the slowest point): a direction that an escape opens may pass
            # half-way only after the plateau has begun
            events.append(Event("plateau", float(t[a]), self.cycle(float(t[slowest])), {
                "start": float(t[a]), "end": float(t[b]), "loss": float(L[slowest]), "start_index": a, "end_index": b,
                "slowest_index": slowest, "final": final, "run_ends_in_drop": final and under_way is not None,
                "next_escape": None if final else drops[p][1]}))
        owner = {}  # each opening belongs to the drop its growth overlaps most (in log time)
        for o in self.openings:
            overlaps = [_overlap(t, o["start"], o["end"], e.start, e.end) for e, _, _ in drops]
            if overlaps and max(overlaps) > 0:
                owner[id(o)] = int(np.argmax(overlaps))
        # a drop is weak against what the figure of its stage shows: the condensation (the first drop)
        # against the run's whole drop, each later one against the drop left after the condensation
        # (the staircase of context learning is drawn on its own scale)
        after_first = float(L[drops[0][0].after] - L.min()) if drops else 0.0
        for j, (e, time, unc) in enumerate(drops):
            scale = self.total_drop if j == 0 else after_first
            opened = [o for o in self.openings if owner.get(id(o)) == j]
            used.update(id(o) for o in opened)
            nxt = drops[j + 1][0].start if j + 1 < len(drops) else len(t) - 1
            events.append(Event("escape", time, self.cycle(time), {
                # the last plateau before it: a drop that starts where the one before it ended shares
                # that drop's plateau
                "from_plateau": max((n for q, n in plateau_before.items() if q <= j), default=None),
                "loss_before": float(L[e.before]), "loss_after": float(L[e.after]),
                "released": e.change, "fraction_of_total_drop": e.change / max(self.total_drop, 1e-300),
                "fraction_of_stage_drop": e.change / max(scale, 1e-300),
                "opened": [{k: o[k] for k in ("direction", "time", "from", "to")} for o in opened],
                "rank_increment": len(opened), "new_singular_values": [o["to"] for o in opened],
                "start": float(t[e.start]), "end": float(t[e.end]), "settled_at": float(t[nxt])},
                uncertainty=unc, strength=e.change, weak=e.change < VISIBLE_DROP * scale))
        for o in self.openings:
            if id(o) not in used:
                events.append(Event("opening", o["time"], self.cycle(o["time"]), {
                    "direction": o["direction"], "from": o["from"], "to": o["to"]}, uncertainty=o["uncertainty"],
                    strength=float(np.log(o["to"] / o["from"]))))
        return events

    def condensation(self, escapes: list[Event]) -> list[Event]:
        """The first escape that opens a direction; attention counts as frozen there when it has moved
        less than 1% as much as the embedding (relative changes, interpolated at the escape's time)."""
        first = next((e for e in escapes if e.details["rank_increment"] > 0), None)
        if first is None:
            return []
        m = self.m
        norm_E = np.linalg.norm(m.sv_E, axis=1)
        E_change = np.abs(norm_E - norm_E[0]) / max(norm_E[0], 1e-300)
        qk, e_rel = (_at_time(self.t, x, first.time) for x in (m.qk_change, E_change))
        i = m.at(first.details["end"])
        opened = first.details["rank_increment"]
        return [Event("condensation", first.time, first.cycle, {
            "stable_rank_E": float(m.stable_rank_E[i]), "stable_rank_U": float(m.stable_rank_U[i]),
            "embedding_change": e_rel, "qk_change": qk, "attention_frozen": bool(qk < FROZEN * e_rel),
            "max_score": float(m.max_score[i]), "directions_opened": opened,
            "rank_one": bool(opened == 1 and m.stable_rank_E[i] <= 1.5)},
            uncertainty=first.uncertainty, strength=1.0 / float(m.stable_rank_E[i]),
            weak=bool(m.stable_rank_E[i] > 1.5 or opened > 1))]

    # --- focus ------------------------------------------------------------------------------------
    def focus(self) -> list[Event]:
        m, t = self.m, self.t
        if m.focus is None:
            return []
        F = m.focus
        V = len(m.pi)
        if F.max() < VISIBLE_FOCUS * np.log(V):
            return []
        found = peaks(F, FOCUS_FALL, floor=VISIBLE_FOCUS * np.log(V))
        confirmed = [p for p in found if p.confirmed]
        events = []
        top = confirmed[0].index if confirmed else int(np.argmax(F))
        level = ONSET * F[top]
        i = int(np.argmax(F > level))
        if i > 0:
            time, unc = self.refiner.crossing(t, F, i, level, lambda mm: mm.focus, ONSET * _spread(F, top))
            events.append(Event("focus_onset", time, self.cycle(time), {
                "focus_index": float(level), "max_score": float(m.max_score[i])}, uncertainty=unc))
        for n, p in enumerate(confirmed):
            # the fall after a peak ends at the lowest point before the next peak (or its own base)
            nxt = confirmed[n + 1].index if n + 1 < len(confirmed) else None
            low = p.right_base if nxt is None else p.index + int(np.argmin(F[p.index:nxt + 1]))
            time, unc = self.refiner.maximum(t, F, p.index, lambda mm: mm.focus)
            peak_event = self._peak(p.index, time, unc, final=False, low=low)
            events.append(peak_event)
            fall = 1.0 - F[low] / F[p.index]
            half = 0.5 * (F[p.index] + F[low])
            j = crossing(t, F, half, p.index, low)
            dtime, dunc = self.refiner.crossing(t, F, j, half, lambda mm: mm.focus,
                                                0.5 * (_spread(F, p.index) + _spread(F, low)))
            focused = peak_event.details["gained_tokens"]
            mass = m.key_mass[:, :, focused].sum(axis=-1).mean(axis=1)
            gain = mass[p.index] - float(m.pi[focused].sum())
            mass_fall = (mass[p.index] - mass[low]) / max(abs(gain), 1e-300)
            events.append(Event("dilution", dtime, self.cycle(dtime), {
                "focus_index": float(F[low]), "peak_focus_index": float(F[p.index]), "fall_fraction": float(fall),
                "focused_tokens": focused, "focused_labels": [m.token_labels()[b] for b in focused],
                "focused_mass_at_peak": float(mass[p.index]),
                "focused_mass": float(mass[low]), "focused_gain_lost": float(mass_fall)},
                uncertainty=dunc, strength=float(fall), weak=bool(fall < WEAK_FALL or mass_fall < 0.05)))
        events += self._mass_peaks([e for e in events if e.kind == "focus_peak"])
        rises = [e for e in episodes(t, F) if e.confirmed and e.change >= VISIBLE_FOCUS * np.log(V)]
        if rises and not any(p.index > rises[-1].peak for p in confirmed):
            # the focus rises one last time and levels off by the end of the run: report where it
            # settles, timed half-way up that last rise (as escapes are timed half-way down theirs)
            last, rate = rises[-1], log_time_slope(t, F)
            k = crossing(t, F, last.level(F), last.before, last.after)
            if k is not None and abs(rate[-1]) < EXTENT * rate[last.peak]:
                time, unc = self.refiner.crossing(t, F, k, last.level(F), lambda mm: mm.focus,
                                                  last.level_uncertainty(F))
                events.append(self._peak(len(t) - 1, time, unc, final=True, low=len(t) - 1))
        return events

    def _mass_peaks(self, focus_events: list[Event]) -> list[Event]:
        """Focus seen in one key token's attention mass (module docstring): a confirmed peak of the
        token's gain over uniform attention, at least `VISIBLE_MASS`, falling to `MASS_SPIKE` or less
        on both sides. It is the same event as a focus-index peak only when that peak lies within the
        token's own spike (where its gain is above half its peak) and names the token among those it
        gained; otherwise it is reported, with its dilution, however wide the focus index's peaks are
        (a later F-peak's base reaching back over the spike does not hide it)."""
        m, t = self.m, self.t
        mass = m.key_mass.mean(axis=1)
        out = []
        for b in range(mass.shape[1]):
            gain = mass[:, b] - m.pi[b]
            for p in peaks(gain, MASS_SPIKE, floor=VISIBLE_MASS):
                if not p.confirmed:
                    continue
                lo, hi = _half_span(gain, p.index)
                if any(lo <= m.at(e.time) <= hi and b in e.details["gained_tokens"] for e in focus_events):
                    continue

                def signal(mm, b=b):
                    return mm.key_mass.mean(axis=1)[:, b] - mm.pi[b]

                time, unc = self.refiner.maximum(t, gain, p.index, signal)
                low = p.right_base
                fall = 1.0 - gain[low] / gain[p.index]
                partners = self._symmetric_partners(b, p.index, low)
                broken = {"symmetry_breaking": bool(partners), "equally_frequent_with": partners}
                out.append(Event("focus_peak", time, self.cycle(time), {
                    "focus_index": float(m.focus[p.index]), "gained_tokens": [b], "frequency_ranks": [self._rank(b)],
                    "gains": [float(gain[p.index])], "frequency_ordered": self._rank(b) == 1,
                    "key_mass": [float(x) for x in mass[p.index]], "final": False,
                    "labels": [m.token_labels()[b]], "seen_in": f"the attention mass of token {m.token_labels()[b]}"}
                    | broken, uncertainty=unc, strength=float(gain[p.index]), weak=bool(fall < WEAK_FALL)))
                half = 0.5 * (gain[p.index] + gain[low])
                j = crossing(t, gain, half, p.index, low)
                dtime, dunc = self.refiner.crossing(t, gain, j, half, signal, 0.5 * (_spread(gain, p.index)
                                                                                    + _spread(gain, low)))
                out.append(Event("dilution", dtime, self.cycle(dtime), {
                    "focus_index": float(m.focus[low]), "peak_focus_index": float(m.focus[p.index]),
                    "fall_fraction": float(fall), "focused_tokens": [b], "focused_labels": [m.token_labels()[b]],
                    "focused_mass_at_peak": float(mass[p.index, b]), "focused_mass": float(mass[low, b]),
                    "focused_gain_lost": float(fall),
                    "seen_in": f"the attention mass of token {m.token_labels()[b]}"} | broken,
                    uncertainty=dunc, strength=float(fall), weak=bool(fall < WEAK_FALL)))
        return out

    def _symmetric_partners(self, b: int, peak: int, low: int) -> list[int]:
        """Tokens as frequent as `b` (to `SAME_FREQUENCY`) whose attention mass tracked b's up to the
        peak and then parted from it: the fall of b's mass is a symmetry among them breaking."""
        m = self.m
        mass = m.key_mass.mean(axis=1)
        out = []
        for a in range(mass.shape[1]):
            if a == b or abs(m.pi[a] - m.pi[b]) > SAME_FREQUENCY * max(m.pi[a], m.pi[b]):
                continue
            together = abs(mass[peak, a] - mass[peak, b]) <= MASS_SPIKE * abs(mass[peak, b] - m.pi[b])
            apart = abs(mass[low, a] - mass[low, b]) > abs(mass[peak, a] - mass[peak, b]) + VISIBLE_MASS
            if together and apart:
                out.append(a)
        return out

    def _rank(self, b: int) -> int:
        return int(np.argsort(np.argsort(-self.m.pi, kind="stable"))[b]) + 1

    def _peak(self, i: int, time: float, unc: float, final: bool, low: int) -> Event:
        m = self.m
        mass = m.key_mass[i].mean(axis=0)
        gain = mass - m.pi
        top = gain.max()
        gained = [int(b) for b in np.argsort(-gain) if gain[b] > 0.01 and gain[b] >= 0.2 * top]
        rank = {int(b): r + 1 for r, b in enumerate(np.argsort(-m.pi, kind="stable"))}
        ranks = [rank[b] for b in gained]
        F = m.focus
        fall = 0.0 if final else 1.0 - F[low] / F[i]  # down to its own base, before F rises past it again
        return Event("focus_peak", time, self.cycle(time), {
            "focus_index": float(F[i]), "gained_tokens": gained, "frequency_ranks": ranks,
            "gains": [float(gain[b]) for b in gained],
            "frequency_ordered": bool(ranks) and sorted(ranks) == list(range(1, len(ranks) + 1)),
            "key_mass": [float(x) for x in mass], "final": final, "labels": [m.token_labels()[b] for b in gained]},
            uncertainty=unc, strength=float(F[i]), weak=bool(not final and fall < WEAK_FALL))


def _half_span(x: np.ndarray, i: int) -> tuple[int, int]:
    """The saved indices around the peak `i` where `x` stays above half of `x[i]`."""
    lo, hi = i, i
    while lo > 0 and x[lo - 1] > 0.5 * x[i]:
        lo -= 1
    while hi < len(x) - 1 and x[hi + 1] > 0.5 * x[i]:
        hi += 1
    return lo, hi


def _at_time(t: np.ndarray, x: np.ndarray, time: float) -> float:
    """`x` at `time`, interpolated linearly in log time between saved points."""
    pos = t > 0
    if not pos.any() or time <= t[pos][0]:
        return float(x[np.argmin(np.abs(t - time))])
    return float(np.interp(np.log(time), np.log(t[pos]), x[pos]))


def _overlap(t: np.ndarray, a0: int, b0: int, a1: int, b1: int) -> float:
    """Length in log time of the overlap of two index spans."""
    lo, hi = max(a0, a1), min(b0, b1)
    if hi <= lo:
        return 0.0
    tt = np.log(np.maximum(t, t[t > 0].min() if np.any(t > 0) else 1.0))
    return float(tt[hi] - tt[lo])


def detect_stages(traj: Trajectory | Metrics, *, refine: bool = True, metrics: Metrics | None = None) -> list[Event]:
    """The stages of learning along `traj` (or on precomputed `Metrics`, then timed on the save grid
    and without a final verdict).

    **Arguments:** `traj`; `refine`: time events by root finding on the re-solved flow between saved
    points (flows only; module docstring); `metrics`: the trajectory's `compute_metrics`, if already
    computed. **Returns:** events sorted by time (plateaus at their start; the final plateau carries
    the verdict on how the run ends).
    """
    m = traj if isinstance(traj, Metrics) else metrics if metrics is not None else compute_metrics(traj)
    source = None if isinstance(traj, Metrics) or not refine else traj
    d = _Detector(m, source, resolved_loss_change(traj if isinstance(traj, Trajectory) else None, m.loss))
    d.find_openings()
    events = d.escapes_and_plateaus()
    if isinstance(traj, Trajectory) and traj.record.kind != "discrete":
        final = next(e for e in events if e.kind == "plateau" and e.details["final"])
        final.details.update(final_verdict(traj))
    escapes = [e for e in events if e.kind == "escape"]
    events += d.condensation(escapes) + d.focus()
    return sort_events(events)


def find_plateaus(m: Metrics) -> list[tuple[int, int]]:
    """The plateaus of `m` as index ranges `(start, end)` (inclusive): the stretches between escapes."""
    return [(e.details["start_index"], e.details["end_index"]) for e in detect_stages(m) if e.kind == "plateau"]
