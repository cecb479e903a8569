"""Saddle fidelity (issue 16): escape times from symmetric saddles at default and tight tolerances.

Sticky chains whose two rarest tokens have equal frequency; rows 2 and 3 of W_E and columns 2 and 3 of
W_U made equal (the symmetric, invariant subspace), then W_E[3, 0] moved by eps. The escape time is
when |W_E[:, 3] - W_E[:, 2]| first reaches 1e-3 (exponential growth: log-linear interpolation on the
save grid). Reference: Dopri5 at rtol 1e-10, atol 1e-16 (an explicit method cannot damp growth).

    .venv/bin/python benchmarks/saddles.py
"""

from __future__ import annotations

import os
import sys
import time

import gflow

# The settings and the escape time are the saddle tests' own, so the table measures what they check.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from test_saddle import escape_time, symmetric_start  # noqa: E402

PIS = ((0.6, 0.2, 0.1, 0.1), (0.5, 0.3, 0.1, 0.1), (0.4, 0.3, 0.15, 0.15))
EPSILONS = (1e-6, 1e-10, 1e-13, 0.0)
CONTENDERS = {
    "BDF, defaults": {},
    "BDF, rtol 1e-8 atol 1e-14": {"rtol": 1e-8, "atol": 1e-14},
    "Rosenbrock, defaults": {"solver": "GradientFlowRosenbrock"},
    "Dopri5, rtol 1e-10 atol 1e-16 (reference)": {"solver": "Dopri5", "rtol": 1e-10, "atol": 1e-16},
}


def main():
    print("| pi | eps | " + " | ".join(CONTENDERS) + " | final loss - entropy rate (BDF) |")
    print("|---|---:|" + "---:|" * (len(CONTENDERS) + 1))
    for pi in PIS:
        for eps in EPSILONS:
            spec, config, p = symmetric_start(pi, eps)
            cells, gap = [], None
            for name, kw in CONTENDERS.items():
                tic = time.perf_counter()
                traj = gflow.simulate(p, spec, (0.0, 2e4), config=config, loss="meanfield", n_save=481, progress=False,
                                      max_steps=10**6, **kw)
                wall = time.perf_counter() - tic
                cells.append(f"{escape_time(traj):.5g} ({traj.stats['num_accepted_steps']} steps, {wall:.1f} s)")
                if gap is None:
                    gap = traj.loss[-1] - spec.entropy_rate()
            print(f"| {pi} | {eps:g} | " + " | ".join(cells) + f" | {gap:.1e} |", flush=True)


if __name__ == "__main__":
    main()
