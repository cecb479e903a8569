"""The flow-against-discrete experiment behind `gflow compare` and examples/sgd_vs_flow.py."""

from __future__ import annotations

import os
import time

import jax

from ..analysis import compare, event_shift_table
from ..flow import make_optimizer, run_record, train
from ..plot import comparison_figure, save_figure
from ._settings import ExperimentSettings

DEFAULT_RUNS = (("gd", 0.05, None), ("gd", 0.5, None), ("gd", 2.0, None), ("sgd", 0.5, 64), ("sgd", 0.5, 8),
                ("adam", 0.01, None))
"""(optimizer, lr, batch size) of the discrete runs; their number of steps covers the flow's time."""


def run_comparison(settings: ExperimentSettings, out_dir: str, *, t_end: float = 3000.0, runs=DEFAULT_RUNS,
                   progress: bool | None = None, echo=print):
    """Flow and discrete runs from the same initial point; figure, shift table and summary in `out_dir`.

    The flow takes every `[flow]` setting (solver, tolerances, step budget, loss and its options) but
    `t_end`, which is the smaller of `t_end` and `[flow].t_end`; the discrete runs use the same loss.
    """
    os.makedirs(out_dir, exist_ok=True)
    spec, config = settings.record.source, settings.record.config
    record = settings.record_until(min(t_end, settings.flow["t_end"]))
    t_end = record.t_span[1]
    p0 = settings.initial_params()
    tic = time.perf_counter()
    flow = run_record(record, p0, progress=progress)
    trajs, comps, lines = [], [], []
    for i, (opt, lr, batch) in enumerate(runs):
        steps = max(1, int(round(t_end / make_optimizer(opt, lr)[2])))  # flow time per step
        traj = train(p0, spec, config, optimizer=opt, lr=lr, steps=steps, batch_size=batch,
                     key=None if batch is None else jax.random.key(100 + i), n_save=settings.flow["n_save"] // 2,
                     progress=progress, loss=flow.record.loss)
        c = compare(flow, traj)
        trajs.append(traj)
        comps.append(c)
        echo(c.summary())
        lines += [f"## {c.label}", "", c.summary(), "", event_shift_table(c.event_shifts), ""]
    fig = comparison_figure(flow, trajs, comps)
    save_figure(fig, os.path.join(out_dir, "comparison"))
    with open(os.path.join(out_dir, "comparison.md"), "w") as fh:
        fh.write("# Discrete training against the gradient flow\n\n![comparison](comparison.png)\n\n"
                 + "\n".join(lines))
    echo(f"wrote {out_dir}/comparison.md and comparison.png/.pdf ({time.perf_counter() - tic:.1f} s)")
    return flow, trajs, comps
