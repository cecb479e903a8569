"""Memory estimates checked before allocating: a size that does not fit is refused with the estimate
and what to change, instead of aborting the process (XLA aborts on a failed allocation) or swapping
for minutes.

`check_memory(what, nbytes, fix)` compares an estimate with the memory the machine has available now
(`MemAvailable` of `/proc/meminfo`, else the physical memory); `MEMORY_FRACTION` of it may be used by
one allocation. Every place that allocates in proportion to a user's size calls it first: the
initial weights, a chain's transition matrix, the save grid and the saved states, a chunk, a
sampled loss's data, a dense Hessian.
"""

from __future__ import annotations

import os

MEMORY_FRACTION = 0.8
"""The most of the available memory one estimated allocation may take."""


def available_bytes() -> int:
    """Memory available to this process now, in bytes."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError, AttributeError):
        return 2**63  # unknown: do not refuse


def format_bytes(n: int | float) -> str:
    for unit, size in (("TB", 2**40), ("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def check_memory(what: str, nbytes: int | float, fix: str) -> None:
    """`ValueError` when `what` would need more than `MEMORY_FRACTION` of the available memory."""
    available = available_bytes()
    if nbytes > MEMORY_FRACTION * available:
        raise ValueError(f"{what} would need about {format_bytes(nbytes)}, more than this machine can give it "
                         f"({format_bytes(available)} available); {fix}.")
