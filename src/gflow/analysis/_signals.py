"""Scale-free features of a signal along a trajectory: peaks with prominence, crossings, noise floors.

The stage detectors are built from these few rules, each relative to the signal itself (its own peak
height, its own range, its own fluctuations) or to float64 round-off, never to one run's numbers.
"""

from __future__ import annotations

import dataclasses

import numpy as np

ROUNDOFF = 1e3 * np.finfo(np.float64).eps
"""Relative size below which a change of a float64 signal is round-off."""


@dataclasses.dataclass(frozen=True)
class Peak:
    """A local maximum of a sampled signal `x` at index `index`, with the lowest points between it and
    the nearest higher point on each side (`left_base`, `right_base`: indices). `confirmed_left` and
    `confirmed_right`: the signal falls on that side to at most `fall` times the peak value before the
    series ends or rises above the peak (a peak at an end of the series is not confirmed there)."""

    index: int
    left_base: int
    right_base: int
    confirmed_left: bool
    confirmed_right: bool

    @property
    def confirmed(self) -> bool:
        return self.confirmed_left and self.confirmed_right


def peaks(x: np.ndarray, fall: float, floor: float = 0.0) -> list[Peak]:
    """The local maxima of `x` above `floor`, each with its bases.

    On each side of a maximum the search runs to the nearest point higher than it (or to the end of
    the series); the lowest point on the way is the base. A side is *confirmed* when its base is at
    most `fall * x[peak]`. A maximum whose side reaches a higher point without such a dip is a shoulder
    of that higher peak and is dropped; one whose side reaches the end of the series without it is
    kept, unconfirmed on that side (the run ended, or started, on it).
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    out = []
    i = 0
    while i < n:
        j = i  # a run of equal values is one candidate, at its middle
        while j + 1 < n and x[j + 1] == x[i]:
            j += 1
        is_max = (i == 0 or x[i - 1] < x[i]) and (j == n - 1 or x[j + 1] < x[i])
        if is_max and x[i] > floor:
            level = fall * x[i]
            (lb, left_closed), (rb, right_closed) = _base(x, i, -1), _base(x, j, +1)
            left, right = x[lb] <= level, x[rb] <= level
            if (left or not left_closed) and (right or not right_closed):
                out.append(Peak((i + j) // 2, int(lb), int(rb), confirmed_left=bool(left), confirmed_right=bool(right)))
        i = j + 1
    return out


def _base(x: np.ndarray, start: int, step: int) -> tuple[int, bool]:
    """The index of the lowest point from `start` to the next point higher than `x[start]` (excluded),
    and whether such a point exists (else the search ran to the end of the series)."""
    best, i = start, start + step
    while 0 <= i < len(x):
        if x[i] > x[start]:
            return best, True
        if x[i] < x[best]:
            best = i
        i += step
    return best, False


def crossing(times: np.ndarray, x: np.ndarray, level: float, lo: int, hi: int) -> int | None:
    """The first index i in (lo, hi] with x on the other side of `level` than x[lo] (None if none)."""
    above = x[lo] > level
    for i in range(lo + 1, hi + 1):
        if (x[i] > level) != above:
            return i
    return None


def interpolate_crossing(t: np.ndarray, x: np.ndarray, level: float, i: int, log_time: bool = True) -> float:
    """The time between `t[i-1]` and `t[i]` where the linear interpolant of x (in log time when both
    are positive) meets `level`."""
    x0, x1 = x[i - 1], x[i]
    f = 0.5 if x1 == x0 else float(np.clip((level - x0) / (x1 - x0), 0.0, 1.0))
    if log_time and t[i - 1] > 0:
        return float(np.exp(np.log(t[i - 1]) + f * np.log(t[i] / t[i - 1])))
    return float(t[i - 1] + f * (t[i] - t[i - 1]))


def fluctuation_scale(x: np.ndarray) -> float:
    """A robust size of the sample-to-sample noise of `x`: the median absolute second difference,
    scaled to the standard deviation of white noise (which has Var(second difference) = 6 sigma^2)."""
    if len(x) < 3:
        return 0.0
    second = np.diff(np.asarray(x, dtype=np.float64), 2)
    return float(1.4826 * np.median(np.abs(second)) / np.sqrt(6.0))


def log_time_rate(times: np.ndarray, x: np.ndarray) -> np.ndarray:
    """$dx / d\\ln t$ on the save grid (centred differences; 0 at t = 0 and where t has one neighbour)."""
    out = np.zeros(len(x))
    pos = np.flatnonzero(times > 0)
    if len(pos) >= 2:
        out[pos] = np.gradient(np.asarray(x, dtype=np.float64)[pos], np.log(times[pos]))
    return out
