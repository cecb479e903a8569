"""Probes and events of sparse high-order tasks (docs/tasks.md): which model class the model is in,
which block each head leans on, and when blocks are acquired, heads compete and heads specialise.

**The class ladder** (Yüksel et al., *Incremental Learning of Sparse Attention Patterns in
Transformers*, 2026, is a ladder of model classes). A `LagClass` is the set of predictors that see
only part of the context at each scored position:

- `uniform`: nothing, not even the law of the next token (the untrained model);
- blocks S (`lag_class(spec, S)`; S empty: *no context*): the tokens at the lags of the blocks in S;
- `bag`: how often each token occurs in the visible context $x_1..x_t$, not at which lag (what
  uniform attention gives a model: it averages every visible position).

The **teacher** of a class is its best predictor, the Bayes conditional $p_c(y \\mid \\text{what c
sees})$ under the data's exact law (uniform: the uniform law), and its **level** the teacher's
expected cross-entropy; both are exact, by enumeration of the contexts (`class_teachers`). The
model's distance to a class is $D_c = E\\,KL(p_c \\| q)$ over the contexts and the scored queries
after the burn-in (`restricted_teacher_kl`).

**Membership.** The model is *in* class c when $D_c \\le$ `ENTRY` $\\cdot\\, g_c$, where the class's
own scale $g_c$ is the smallest KL between its teacher and the teacher of a coarser class,
$\\min_{c' \\subset c} E\\,KL(p_c \\| p_{c'})$ (for nested Bayes classes this is the level gap
$H_{c'} - H_c$ that acquiring c releases; the coarsest class, which has no coarser one, takes the
smallest gap to a finer one). The ratio $D_c / g_c$ is scale-free: it does not depend on the units,
the strength of a block or the size of its gap, and it is at least 1 at any coarser class's teacher
and 0 at c's own, so a model still sitting on a coarser class is never credited with c's blocks. `ENTRY` = 1/2 is the
half-way rule of the escapes and heads (the model has closed half of the information gap to c's
teacher); a much smaller fraction misses classes the flow only passes through: on the
reversed-strength task of docs/tasks.md the model comes within 12% of the strongest block's teacher
at best, because it is already learning the next block. The model's class is the richest (lowest
level) class it is in.

**Events.**
- **block k acquired**: the model enters, for the first time, a class holding block k. It is timed
  at the crossing of the ratio $D_c / g_c$ through `ENTRY`, narrowed by re-solving the flow; blocks
  come in the order the model acquires them (several at once when it enters a class with two new
  blocks). Entering the bag or no-context class is not a block acquisition; `lag_ladder` reports
  every visit and matches each plateau of the loss to the class the model is in there.
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
from collections.abc import Sequence

import numpy as np
from jaxtyping import Float

from ..data import AbstractDataSource, SparseLagSpec, block_lags
from ..record import Trajectory
from ._events import Event, sort_events
from ._lag_blocks import lag_block_attention
from ._lag_classes import (
    ClassTeachers,
    LagClass,
    check_lag_spec,
    class_teachers,
    ladder_classes,
    prefix_classes,
)
from ._metrics import compute_metrics
from ._refine import Refiner
from ._stages import VISIBLE_MASS, detect_stages
from ._table import format_time

LEAN = VISIBLE_MASS
"""A head leans on a block when it pays it this much more than uniform attention would (and more
than to any other block, over uniform)."""

ENTRY = 0.5
"""The model is in a class when its KL to the class's teacher is at most this fraction of the
class's own scale (module docstring)."""

# ------------------------------------------------------------------------------------------------
# probes
def _check(traj: Trajectory | None, spec: AbstractDataSource) -> None:
    check_lag_spec(spec)
    if traj is None:
        return
    if not isinstance(traj, Trajectory):
        raise ValueError(f"`traj` must be a Trajectory; got {type(traj).__name__}.")
    if traj.spec.V != spec.V or getattr(traj.spec, "T", None) != spec.T:
        raise ValueError(f"`traj` was computed on a source with V = {traj.spec.V}, T = {getattr(traj.spec, 'T', None)};"
                         f" `spec` has V = {spec.V}, T = {spec.T}.")


def restricted_teacher_kl(traj: Trajectory, spec: AbstractDataSource,
                          classes: Sequence[LagClass] | None = None) -> Float[np.ndarray, "n C"]:
    """`D[i, c]`: the mean KL divergence $KL(p_c \\| q)$ from the teacher of class c (its Bayes
    predictor, module docstring) to the model's prediction q at saved time i, averaged over every
    context (their exact law under `spec`) and over the scored queries after the burn-in. `classes`:
    default the prefixes 1..k, k = 0..K (`prefix_classes`). Exact: it enumerates the $V^T$ contexts
    (the `enumerate` budget applies)."""
    _check(traj, spec)
    teachers = class_teachers(spec, prefix_classes(spec) if classes is None else classes)
    return teachers.kl(traj.params, traj.config)


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
    block (`mass`, with the uniform `share`), the KL to each prefix class's teacher (`kl`, k = 0..K),
    the prefix levels (`levels`, k = 0..K, from `SparseLagSpec.block_levels`), the position maps;
    and for the class ladder the `teachers` of the ladder's classes, the KL to each (`class_kl`,
    `(n, C)`) and the loss's plateaus (`(start, end, slowest)` saved indices, from `detect_stages`)."""

    times: np.ndarray
    loss: np.ndarray
    mass: np.ndarray
    share: np.ndarray
    kl: np.ndarray
    levels: list[float]
    position_attention: np.ndarray | None
    teachers: ClassTeachers | None = None
    class_kl: np.ndarray | None = None
    plateaus: tuple[tuple[int, int, int], ...] = ()

    @property
    def leaning(self) -> np.ndarray:
        """`(n, heads)`: the block (0-based) each head leans on, or -1."""
        s = lean_signal(self.mass, self.share)
        return np.where(s.max(axis=-1) >= 0, s.argmax(axis=-1), -1)

    @property
    def class_ratio(self) -> np.ndarray:
        """`(n, C)`: $D_c / g_c$, the model's distance to each class on the class's own scale."""
        if self.teachers is None or self.class_kl is None:
            raise ValueError("these probes have no class ladder (`teachers`, `class_kl`); use `lag_probes`.")
        return self.teachers.ratio(self.class_kl)

    @property
    def current_class(self) -> np.ndarray:
        """`(n,)`: the index of the class the model is in (the richest with ratio <= `ENTRY`), or -1."""
        inside = self.class_ratio <= ENTRY
        rank = np.argsort(np.lexsort(([len(c.blocks) for c in self.teachers.classes], self.teachers.levels)))
        ranked = np.where(inside, rank[None, :], len(rank))
        best = ranked.argmin(axis=1)
        return np.where(inside.any(axis=1), best, -1)


def lag_probes(traj: Trajectory, spec: AbstractDataSource) -> LagProbes:
    """All the sparse-task signals of `traj` (see `LagProbes`)."""
    _check(traj, spec)
    m = compute_metrics(traj)
    teachers = class_teachers(spec, ladder_classes(spec))  # the ladder holds every prefix
    class_kl = teachers.kl(traj.params, traj.config)
    kl = class_kl[:, [teachers.index(c) for c in prefix_classes(spec)]]
    plateaus = tuple((e.details["start_index"], e.details["end_index"], e.details["slowest_index"])
                     for e in detect_stages(m) if e.kind == "plateau")
    return LagProbes(times=np.asarray(traj.times), loss=np.asarray(traj.loss), mass=lag_block_attention(m, spec),
                     share=uniform_block_share(spec), kl=kl, levels=spec.block_levels(),
                     position_attention=m.position_attention, teachers=teachers, class_kl=class_kl, plateaus=plateaus)


# ------------------------------------------------------------------------------------------------
# the ladder the model climbs
@dataclasses.dataclass(frozen=True)
class ClassVisit:
    """A stay of the model in one class: entered at `time` (± `uncertainty`; refined like events), last
    seen there at saved time `until`; the closest it came (`min_ratio` of $D_c / g_c$ at
    `min_ratio_time`) while there; `new_blocks`: the blocks it acquired by entering (first time)."""

    cls: LagClass
    level: float
    time: float
    uncertainty: float
    until: float
    min_ratio: float
    min_ratio_time: float
    new_blocks: tuple[int, ...]
    start_index: int


@dataclasses.dataclass(frozen=True)
class PlateauMatch:
    """A plateau of the loss (`start`..`end`, `loss` at its slowest point) and the class it matches:
    the class the model is in there (`inside`), or between classes the one it is nearest to on the
    classes' own scales; `ratio` is $D_c / g_c$ there and `level` the class's level, so
    `loss - level` says how far the plateau sits from the class's best predictor."""

    start: float
    end: float
    loss: float
    cls: LagClass
    inside: bool
    ratio: float
    level: float


@dataclasses.dataclass(frozen=True)
class LagLadder:
    """Which class the model is in over the run (`visits`, in time order) and which class each plateau
    of the loss matches (`plateaus`); the `teachers` hold the classes' levels and scales."""

    teachers: ClassTeachers
    visits: tuple[ClassVisit, ...]
    plateaus: tuple[PlateauMatch, ...]

    @property
    def acquisition_order(self) -> list[int]:
        """The blocks in the order the model acquired them."""
        return [k for v in self.visits for k in v.new_blocks]


def _first(condition: np.ndarray, start: int = 0) -> int | None:
    hits = np.flatnonzero(condition[start:])
    return int(hits[0]) + start if len(hits) else None


class _LagDetector:
    def __init__(self, traj: Trajectory | None, spec: SparseLagSpec, probes: LagProbes):
        self.p, self.spec = probes, spec
        self.t = probes.times
        self.mass_refiner = Refiner(traj, lambda sub: lag_block_attention(compute_metrics(sub), spec))
        if probes.teachers is not None:
            teachers = probes.teachers
            self.ratio_refiner = Refiner(traj, lambda sub: teachers.ratio(teachers.kl(sub.params, sub.config)))

    # --- the class ladder -------------------------------------------------------------------------
    def ladder(self) -> LagLadder:
        p = self.p
        teachers, R, current = p.teachers, p.class_ratio, p.current_class
        runs = []  # (class index, first index, last index): stays, merged across stretches in no class
        for i, c in enumerate(current):
            if c < 0:
                continue
            if runs and runs[-1][0] == c:
                runs[-1][2] = i
            else:
                runs.append([int(c), i, i])
        visits, acquired = [], set()
        for r, (c, a, b) in enumerate(runs):
            cls = teachers.classes[c]
            before = runs[r - 1][0] if r else None
            time, unc = self._entry_time(c, before, a)
            j = a + int(np.argmin(R[a:b + 1, c]))
            new = tuple(k for k in cls.blocks if k not in acquired)
            acquired |= set(cls.blocks)
            visits.append(ClassVisit(cls=cls, level=float(teachers.levels[c]), time=time, uncertainty=unc,
                                     until=float(self.t[b]), min_ratio=float(R[j, c]), min_ratio_time=float(self.t[j]),
                                     new_blocks=new, start_index=a))
        return LagLadder(teachers=teachers, visits=tuple(visits), plateaus=tuple(self._plateaus()))

    def _entry_time(self, c: int, before: int | None, i: int) -> tuple[float, float]:
        """When the model enters class c between saved points i-1 and i: its ratio crossing `ENTRY`
        downwards, or (c was already within reach but a richer class held the model) the previous
        class's ratio crossing it upwards."""
        if i == 0:
            return float(self.t[0]), 0.0
        R = self.p.class_ratio
        column = c if R[i - 1, c] > ENTRY else before if before is not None and R[i - 1, before] <= ENTRY else None
        if column is None or not (np.isfinite(R[i - 1, column]) and np.isfinite(R[i, column])):
            return float(self.t[i]), 0.5 * float(self.t[i] - self.t[i - 1])
        return self.ratio_refiner.crossing(self.t, R[:, column], i, ENTRY, lambda ratio: ratio[:, column])

    def _plateaus(self) -> list[PlateauMatch]:
        p = self.p
        teachers, R, current = p.teachers, p.class_ratio, p.current_class
        out = []
        for a, b, s in p.plateaus:
            c = int(current[s]) if current[s] >= 0 else int(np.argmin(R[s]))
            out.append(PlateauMatch(start=float(self.t[a]), end=float(self.t[b]), loss=float(p.loss[s]),
                                    cls=teachers.classes[c], inside=bool(current[s] >= 0), ratio=float(R[s, c]),
                                    level=float(teachers.levels[c])))
        return out

    def acquisitions(self, ladder: LagLadder) -> list[Event]:
        p, out = self.p, []
        teachers = ladder.teachers
        order = 0
        for r, v in enumerate(ladder.visits):
            if not v.new_blocks:
                continue
            c = teachers.index(v.cls)
            before = ladder.visits[r - 1] if r else None
            level_before = before.level if before is not None else float(p.loss[0])
            i = v.start_index
            stay = np.flatnonzero(p.times[i:] <= v.until) + i
            j = int(stay[np.argmin(p.class_kl[stay, c])])
            for k in v.new_blocks:
                order += 1
                out.append(Event("block_acquired", v.time, 1, {
                    "block": k, "blocks": list(v.cls.blocks), "class": v.cls.label,
                    "class_before": before.cls.label if before is not None else None, "order": order,
                    "level": v.level, "level_before": level_before,
                    "nearest_teacher": teachers.classes[int(np.argmin(p.class_kl[i]))].label,
                    "kl": float(ENTRY * teachers.scales[c]), "scale": float(teachers.scales[c]), "entry_ratio": ENTRY,
                    "kl_min": float(p.class_kl[j, c]), "kl_min_time": float(self.t[j]),
                    "kl_bottoms_out": j < len(self.t) - 1},
                    uncertainty=v.uncertainty, strength=float(level_before - v.level)))
        return out

    # --- heads ------------------------------------------------------------------------------------
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


def _shared(assignment: dict[int, int]) -> list[int]:
    blocks = list(assignment.values())
    return sorted({k for k in blocks if blocks.count(k) >= 2})


def _probes_of(traj: Trajectory | None, spec: AbstractDataSource, probes: LagProbes | None) -> LagProbes:
    _check(traj, spec)
    if probes is None:
        if traj is None:
            raise ValueError("give `traj` or `probes`.")
        probes = lag_probes(traj, spec)
    if not isinstance(probes, LagProbes):
        raise ValueError(f"`probes` must be the LagProbes of `lag_probes(traj, spec)`; got {type(probes).__name__}.")
    return probes


def lag_ladder(traj: Trajectory | None, spec: AbstractDataSource, probes: LagProbes | None = None) -> LagLadder:
    """The classes the model is in over the run and the class each plateau matches (module docstring).
    `probes`: `lag_probes(traj, spec)`, if already computed; with `traj=None` entry times are
    interpolated between saved points instead of re-solved."""
    probes = _probes_of(traj, spec, probes)
    if probes.teachers is None or probes.class_kl is None:
        raise ValueError("`probes` has no class ladder (`teachers`, `class_kl`): make them with `lag_probes`.")
    return _LagDetector(traj, spec, probes).ladder()


def detect_lag_events(traj: Trajectory | None, spec: AbstractDataSource, probes: LagProbes | None = None,
                      ladder: LagLadder | None = None) -> list[Event]:
    """The events of a sparse-task run (module docstring): blocks acquired, competition, specialisation,
    in time order. `spec` must be a `SparseLagSpec`; `probes`: `lag_probes(traj, spec)`, and `ladder`:
    `lag_ladder(traj, spec, probes)`, if already computed; with `traj=None` (signals from elsewhere)
    the times are interpolated between saved points instead of re-solved. Probes without a class
    ladder give no acquisitions."""
    probes = _probes_of(traj, spec, probes)
    d = _LagDetector(traj, spec, probes)
    events = d.competition_and_specialisation()
    if probes.teachers is not None and probes.class_kl is not None:
        events += d.acquisitions(d.ladder() if ladder is None else ladder)
    return sort_events(events)


def ladder_table(ladder: LagLadder) -> str:
    """Markdown: every class's level and scale; the classes the model is in, in time order (entry time,
    last saved time there, closest approach, blocks acquired); each plateau and the class it matches."""
    if not isinstance(ladder, LagLadder):
        raise ValueError(f"`ladder` must be a LagLadder (`lag_ladder(traj, spec)`); got {type(ladder).__name__}.")
    teachers = ladder.teachers
    levels = ", ".join(f"{c.label} {x:.4f}" for c, x in sorted(zip(teachers.classes, teachers.levels, strict=True),
                                                                 key=lambda cx: -cx[1]))
    rows = [f"Class levels: {levels}.", "", "| entered | class | level | until | closest (KL / scale, t) | acquires |",
            "|---:|---|---:|---:|---|---|"]
    for v in ladder.visits:
        blocks = ", ".join(f"block {k}" for k in v.new_blocks) or "-"
        rows.append(f"| {format_time(v.time, v.uncertainty)} | {v.cls.label} | {v.level:.4f} | {v.until:.4g} | "
                    f"{v.min_ratio:.3g} at t = {v.min_ratio_time:.4g} | {blocks} |")
    if not ladder.visits:
        rows.append(f"| - | the model enters no class (KL / scale never <= {ENTRY}) | | | | |")
    if ladder.plateaus:
        rows += ["", "| plateau | loss | class (KL / scale) | its level | loss - level |", "|---|---:|---|---:|---:|"]
        for m in ladder.plateaus:
            what = f"{m.cls.label} ({m.ratio:.3g})" if m.inside else f"none; nearest {m.cls.label} ({m.ratio:.3g})"
            rows.append(f"| t in [{m.start:.3g}, {m.end:.3g}] | {m.loss:.4f} | {what} | {m.level:.4f} | "
                        f"{m.loss - m.level:+.4f} |")
    return "\n".join(rows)
