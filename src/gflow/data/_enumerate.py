"""Enumerating every sequence of a fixed length, under a budget: the one place exact laws are built
by listing contexts (Markov chains, sparse-lag teachers and their windows, the `enumerate` loss).

An exact law over $V^T$ contexts is only affordable for small $V^T$; every caller states its
budget, and a problem over it is refused with the same message, naming the count and what to use
instead, before anything is allocated.
"""

from __future__ import annotations

import math

import numpy as np
from jaxtyping import Int


def count_text(n: int) -> str:
    """An integer of any size as a short decimal: `4.3e+120` (floats overflow past 1e308)."""
    if n < 10**6:
        return str(n)
    exponent = math.log10(n)  # exact enough for any size; math.log10 takes big integers
    return f"{10 ** (exponent % 1):.2f}e+{int(exponent)}"


def over_budget(V: int, T: int, budget: int, *, what: str = "method='enumerate'", items: str = "sequences",
                alternatives: str = "") -> str | None:
    """Why enumerating the $V^T$ sequences exceeds `budget` (a sentence), or `None` when it fits."""
    n = V**T
    if n <= budget:
        return None
    return (f"{what} would sum over V**T = {V}**{T} = {count_text(n)} {items}, above the budget of {budget}"
            + (f". {alternatives}" if alternatives else ""))


def enumerate_contexts(V: int, T: int, budget: int, **message) -> Int[np.ndarray, "N T"]:
    """Every sequence of `T` tokens over `V` (N = V**T rows, the last column varying fastest: row `i`
    is `i` written in base V), or `ValueError` when N exceeds `budget` (`message`: `over_budget`'s
    keywords, to say what the enumeration is for and what to use instead)."""
    reason = over_budget(V, T, budget, **message)
    if reason is not None:
        raise ValueError(reason + ".")
    return np.stack(np.unravel_index(np.arange(V**T), (V,) * T), axis=1).astype(np.int32)
