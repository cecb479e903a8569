"""Sweep initial scale x seed with `gflow.sweep` (one run per point, on every CPU core, resumable) and
draw a phase diagram: the first escape time against the initial scale, beside the linearisation's
prediction, and the sweep's own heat map of the escape time.

Near the origin the flow is linear with growth rate |lambda_min| of the Hessian at zero, so the first
escape takes about log(1/scale) / |lambda_min|: the fitted slope is printed beside that prediction.
The escape is timed where the loss has fallen half-way across its first drop (detect_stages, by root
finding on the re-solved flow): a point of the drop itself, not the end of a plateau judged by a
threshold, which is what the prediction is about. Writes phase-diagram.png/.pdf and the sweep's
folder `phase-diagram-sweep/` (run it again: nothing is recomputed).
"""

import json
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import gflow
from gflow.analysis import linearize
from gflow.plot import save_figure

BASE = {"chain": {"kind": "sticky", "pi": [0.75, 0.19, 0.05, 0.01], "lam": 0.5, "T": 10},
        "model": {"d_model": 8}, "flow": {"t_end": 2e4, "loss": "meanfield", "n_save": 161}}
SCALES = [float(s) for s in np.logspace(-5, -2, 7)]
SEEDS = [0, 1, 2]


def main():
    print(f"sweeping {len(SCALES)} init scales x {len(SEEDS)} seeds ...", flush=True)
    result = gflow.sweep(BASE, {"init.scale": SCALES, "init.seed": SEEDS}, out="phase-diagram-sweep",
                         plot="first_escape")
    rows = result.rows
    scales = np.array([r["init.scale"] for r in rows])
    first_escape = np.array([r["first_escape"] for r in rows])
    escapes = []
    for r in rows:  # every escape of each run, from the events the sweep stored beside it
        with open(os.path.join(result.out, "runs", r["run_id"], "events.json")) as fh:
            escapes.append([e["time"] for e in json.load(fh) if e["kind"] == "escape"])

    # Prediction: the most negative Hessian eigenvalue at the origin (W = 0 is a saddle of the loss).
    spec = gflow.MarkovSpec.sticky(BASE["chain"]["pi"], BASE["chain"]["lam"], T=BASE["chain"]["T"])
    config = gflow.TransformerConfig(d_model=8)
    zero = jax.tree.map(jnp.zeros_like, gflow.init_params(jax.random.key(0), config, spec, scale=1.0))
    rate = linearize(zero, spec, config, loss="meanfield").escape_rate
    log_inv = np.log(1 / scales)
    slope, intercept = np.polyfit(log_inv, first_escape, 1)
    print(f"first escape time ~ {slope:.3f} log(1/scale) + {intercept:.2f}; linearisation at 0 predicts slope "
          f"1/|lambda_min| = {1 / rate:.3f}")
    for scale in SCALES:
        reached = [int(r["cycles"]) for r in rows if r["init.scale"] == scale]
        print(f"scale {scale:.1e}: cycles reached by t = 2e4, seeds {SEEDS}: {reached}")

    print("drawing phase-diagram.png ...", flush=True)
    fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.4), constrained_layout=True)
    ax = axes[0]
    ax.scatter(log_inv, first_escape, s=14, color="tab:blue", label=f"runs ({len(SEEDS)} seeds per scale)")
    x = np.linspace(log_inv.min(), log_inv.max(), 50)
    ax.plot(x, slope * x + intercept, color="k", lw=1, label=f"fit: slope {slope:.2f}")
    ax.plot(x, x / rate + (intercept + (slope - 1 / rate) * log_inv.mean()), color="tab:red", ls="--", lw=1,
            label=f"1/|$\\lambda_{{min}}$(0)| = {1 / rate:.2f}")
    ax.set_xlabel("log(1 / init scale)")
    ax.set_ylabel("first escape time")
    ax.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.25), ncol=2)
    ax = axes[1]
    for k in range(max(len(e) for e in escapes)):
        pts = [(s, e[k]) for s, e in zip(scales, escapes, strict=True) if len(e) > k]
        ax.scatter(*zip(*pts, strict=True), s=14, label=f"escape {k + 1}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("init scale")
    ax.set_ylabel("escape time")
    cycles = [int(r["cycles"]) for r in rows]
    ax.set_title(f"cycles reached by t = 2e4: {min(cycles)}-{max(cycles)}", fontsize=8)
    ax.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    save_figure(fig, "phase-diagram")


if __name__ == "__main__":  # the sweep spawns worker processes
    main()
