"""The dense BDF's Newton iteration: today's settings against the previous ones, on ten flows.

The dense BDF mixes its Newton corrections (Anderson's mixing) and, since 2026-12-07, lets the mixed
iteration run to `MIXED_NEWTON_MAXITER` corrections, abandons it at a growth of
`MIXED_NEWTON_DIVERGENCE` and stops it at `MIXED_NEWTON_TOLERANCE` (src/gflow/solvers/_bdf.py). The
previous iteration stopped at scipy's four corrections, CVODE's twofold growth and CVODE's tolerance.
Each flow runs to t = 1e5 at rtol 1e-6, atol 1e-9 on 61 log-spaced save times (121 for problem A),
both ways, alternating, after a compiling run; errors are against the dense BDF at rtol 1e-9, atol
1e-12 (its own error is about a thousandth of the runs').

Problem A is the demo flow (`solvers.py`), E the untuned dense flow of `scale.py`; the others are
chains of 56 to 348 parameters (one, `value2`, with the value path and two heads). A Markdown table
is printed: wall (the fastest and slowest of `--runs`), accepted (rejected) steps, Hessian renewals
and gradients, and the largest relative parameter error over the grid.

    .venv/bin/python benchmarks/newton.py [--flows E,A,...] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from scale import PROBLEMS, setting  # this folder, put on the path above

FLOWS = {
    "E": PROBLEMS["E"],
    "A": None,  # the demo flow, built by `solvers.problem("A")`
    "dirichlet11": dict(V=5, d=6, heads=1, value=False, chain="dirichlet", alpha=0.5, seed=11),
    "sticky7": dict(V=8, d=8, heads=1, value=False, chain="sticky", exponent=1.0, lam=0.3, seed=7),
    "dirichlet9": dict(V=7, d=6, heads=1, value=False, chain="dirichlet", alpha=0.2, seed=9),
    "dirichlet21": dict(V=6, d=8, heads=1, value=False, chain="dirichlet", alpha=0.7, seed=21),
    "sticky4": dict(V=6, d=6, heads=1, value=False, chain="sticky", exponent=1.5, lam=0.6, seed=4),
    "value2": dict(V=5, d=6, heads=2, value=True, chain="dirichlet", alpha=0.4, seed=2),
    "tiny5": dict(V=3, d=4, heads=1, value=False, chain="sticky", exponent=1.0, lam=0.5, seed=5),
    "sticky12": dict(V=10, d=8, heads=1, value=False, chain="sticky", exponent=1.2, lam=0.5, seed=12),
}
T1 = 1e5


def flow(name: str):
    """(spec, config, params0, number of save times) of a flow of `FLOWS`."""
    if name == "A":
        from solvers import problem

        spec, config, p0, _, _ = problem("A")
        return spec, config, p0, 121
    return (*setting(**FLOWS[name]), 61)


def iterations():
    """The two Newton iterations compared: (label, solver options)."""
    from gflow.solvers._bdf import NEWTON_DIVERGENCE, NEWTON_MAXITER, NEWTON_TOLERANCE

    previous = dict(newton_iterations=NEWTON_MAXITER, newton_divergence=NEWTON_DIVERGENCE,
                    newton_tolerance=NEWTON_TOLERANCE)
    return [("previous", previous), ("today", {})]


def compare(name: str, runs: int) -> list[str]:
    import gflow
    from gflow.solvers import GradientFlowBDF

    spec, config, p0, n_save = flow(name)
    grid = gflow.default_save_times((0.0, T1), n_save)
    base = dict(config=config, loss="meanfield", atol=1e-9, progress=False, max_steps=100_000, save_times=grid[1:])
    exact = gflow.simulate(p0, spec, (0.0, T1), **(base | dict(solver=GradientFlowBDF(rtol=1e-9, atol=1e-12),
                                                               rtol=1e-9, atol=1e-12))).flat_params()
    kws = {label: base | dict(solver=GradientFlowBDF(rtol=1e-6, atol=1e-9, **options), rtol=1e-6)
           for label, options in iterations()}
    walls, last = {label: [] for label in kws}, {}
    for label, kw in kws.items():
        gflow.simulate(p0, spec, (0.0, T1), **kw)  # compiles
    for _ in range(runs):
        for label, kw in kws.items():
            tic = time.perf_counter()
            last[label] = gflow.simulate(p0, spec, (0.0, T1), **kw)
            walls[label].append(time.perf_counter() - tic)
    rows = []
    for label, traj in last.items():
        s, ys = traj.stats, traj.flat_params()
        error = np.max(np.linalg.norm(ys - exact, axis=1) / np.linalg.norm(exact, axis=1))
        rows.append(f"| {name} | {ys.shape[1]} | {label} | {min(walls[label]):.3f}-{max(walls[label]):.3f} | "
                    f"{s['num_accepted_steps']:,} ({s['num_rejected_steps']:,}) | {s['num_hessian_evaluations']} | "
                    f"{s['num_gradient_evaluations']:,} | {error:.2e} | {traj.status.value} |")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--flows", default=",".join(FLOWS), help="comma-separated names of FLOWS")
    ap.add_argument("--runs", type=int, default=3, help="timed runs of each iteration, alternating")
    args = ap.parse_args()
    names = args.flows.split(",")
    unknown = [n for n in names if n not in FLOWS]
    if unknown:
        ap.error(f"--flows: unknown {unknown}; choose from {list(FLOWS)}")
    print("| flow | parameters | Newton iteration | wall (s) | steps (rejected) | Hessians | gradients | error "
          "| status |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---|")
    for name in names:
        for row in compare(name, args.runs):
            print(row, flush=True)


if __name__ == "__main__":
    main()
