"""Ensemble members solved by the kept pool of worker processes (`simulate_many`'s
`batching="processes"`; the pool itself, one pinned process per core, is `common/_pool.py`).

- Each member's run is `run_record` on one state, exactly as `simulate` runs it (same solver, same
  compiled program), so the results are those of a loop of `simulate` calls, to the last bit.
- A worker makes the plan of a problem once and keeps it for the later members of the same problem
  (`_PLANS`); its workers load the stored solve (`common/_programs.py`) and its compilation
  (`common/_warm.py`) when the parent has made them, so a warm call pays neither tracing nor
  compilation.
- Members are handed out one at a time, so a stiff member never holds back an easy one.
"""

from __future__ import annotations

import numpy as np

from ..common import worker_pool
from ._plan import RunPlan
from ._simulate import run_record

_PLANS: dict = {}
"""This worker's plans, by problem (data, model, loss, solver): the members of one ensemble share one."""


def _plan_for(record) -> RunPlan:
    key = (record.source.cache_key(), record.config, record.loss, record.solver)
    if key not in _PLANS:
        _PLANS.clear()  # a worker serves one ensemble at a time
        _PLANS[key] = RunPlan.of(record)
    return _PLANS[key]


def _solve_member(record, y0: np.ndarray, member: int) -> dict:
    traj = run_record(record, record.layout.unflatten(y0), plan=_plan_for(record), progress=False)
    return {"times": traj.times, "ys": traj.flat_params(), "loss": traj.loss, "grad_norm": traj.grad_norm,
            "stats": {**traj.stats, "ensemble_member": member}, "status": str(traj.status), "message": traj.message}


def solve_members(record, y0: np.ndarray, size: int):
    """Futures of every member's arrays, solved by the pool (in member order)."""
    pool = worker_pool(size)
    return [pool.submit(_solve_member, record, np.asarray(y0[b]), b) for b in range(len(y0))]
