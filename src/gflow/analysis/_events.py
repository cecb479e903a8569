"""Stage events: the `Event` record, and the table of event kinds (order, colour, meaning).

`EVENT_KINDS` is the one place a new kind of event goes: detectors emit it, tables sort by its
order, and figures draw it in its colour (kinds without a colour are drawn as bands, not lines).
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Event:
    """A stage event.

    - `kind` (a key of `EVENT_KINDS`), `time`, and `uncertainty`: the half-width of the interval the
      time is known to lie in (from root finding on the solution between saved points; half a save
      interval where the run cannot be re-solved).
    - `cycle`: the number of embedding directions opened before `time` (at least 1).
    - `strength`: how much happened, in the kind's own unit (loss released by an escape, relative
      fall of the focus index, ...; `details` names it); `weak`: below what a figure of the run shows.
    - `details`: kind-specific numbers, all plain Python values.
    """

    kind: str
    time: float
    cycle: int
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    uncertainty: float = 0.0
    strength: float = float("nan")
    weak: bool = False


@dataclasses.dataclass(frozen=True)
class EventKind:
    """How an event kind is shown: its `colour` in figures (`None`: not drawn as a line) and what it means."""

    name: str
    colour: str | None
    meaning: str


EVENT_KINDS: dict[str, EventKind] = {k.name: k for k in (
    EventKind("plateau", None, "the loss is flat in log time: the flow sits near a critical point"),
    EventKind("condensation", "tab:green", "W_E and W_U reach rank one after growing, attention still frozen"),
    EventKind("focus_onset", "tab:orange", "attention leaves the frequency-weighted average"),
    EventKind("focus_peak", "tab:red", "the focus index peaks: attention concentrates on some key tokens"),
    EventKind("dilution", "tab:purple", "the focus index falls from its peak: attention mass is redistributed"),
    EventKind("escape", "tab:blue", "the loss drops from one plateau to the next (timed at half the drop)"),
    EventKind("opening", None, "a singular direction of W_E grows from its plateau to its next level"),
    EventKind("competition", "tab:pink", "sparse tasks: two or more heads lean on the same lag block"),
    EventKind("block_acquired", "tab:brown", "sparse tasks: the model enters a class holding block k (its KL "
              "to the class's teacher is at most half the class's scale)"),
    EventKind("specialisation", "tab:cyan", "sparse tasks: the leaning heads cover two or more lag blocks"),
    EventKind("previous_token_head", "tab:olive", "a first-layer head has gone half-way from uniform attention to "
              "attending to the previous position"),
    EventKind("induction_head", "black", "a second-layer head has gone half-way from uniform attention to attending "
              "to the tokens that followed earlier occurrences of the current token"),
)}
"""Every event kind, in the order events at equal times are listed."""

EVENT_COLORS = {name: k.colour for name, k in EVENT_KINDS.items() if k.colour is not None}
"""Colours of the kinds drawn as vertical lines in the figures."""


def sort_events(events: list[Event]) -> list[Event]:
    """Events by time, and at equal times in the order of `EVENT_KINDS`."""
    order = {k: r for r, k in enumerate(EVENT_KINDS)}
    return sorted(events, key=lambda e: (e.time, order[e.kind]))
