"""Sweep initial scale x seed as one ensemble on every CPU core (gflow.simulate_many) and draw a phase
diagram: the first escape time and the number of cycles reached against the initial scale.

Near the origin the flow is linear with growth rate |lambda_min| of the Hessian at zero, so the first
escape takes about log(1/scale) / |lambda_min|: the fitted slope is printed beside that prediction.
The escape is timed where the loss has fallen half-way across its first drop (detect_stages, by root
finding on the re-solved flow): a point of the drop itself, not the end of a plateau judged by a
threshold, which is what the prediction is about. Writes phase-diagram.png/.pdf.
"""

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import gflow
from gflow.analysis import detect_stages, linearize
from gflow.plot import save_figure


def main():
    spec = gflow.MarkovSpec.sticky([0.75, 0.19, 0.05, 0.01], 0.5, T=10)
    config = gflow.TransformerConfig(d_model=8)
    scales = np.logspace(-5, -2, 7)
    seeds = range(3)
    members = [(s, seed) for s in scales for seed in seeds]
    batch = gflow.stack_params([gflow.init_params(jax.random.key(seed), config, spec, scale=float(s))
                                for s, seed in members])
    # one worker process per CPU core (the fastest path on CPUs; docs/performance.md)
    print(f"solving {len(members)} flows (init scale x seed) on worker processes ...", flush=True)
    trajs = gflow.simulate_many(batch, spec, (0.0, 2e4), config=config, loss="meanfield", n_save=161,
                                batching="processes")

    print("detecting the stages of each run ...", flush=True)
    first_escape, cycles, all_escapes = [], [], []
    for traj in trajs:
        events = detect_stages(traj)
        escapes = [e.time for e in events if e.kind == "escape"]
        all_escapes.append(escapes)
        first_escape.append(escapes[0] if escapes else np.nan)
        cycles.append(max(e.cycle for e in events))
    first_escape, cycles = np.array(first_escape), np.array(cycles)

    # Prediction: the most negative Hessian eigenvalue at the origin (W = 0 is a saddle of the loss).
    zero = jax.tree.map(jnp.zeros_like, gflow.init_params(jax.random.key(0), config, spec, scale=1.0))
    rate = linearize(zero, spec, config, loss="meanfield").escape_rate
    log_inv = np.log(1 / np.array([s for s, _ in members]))
    slope, intercept = np.polyfit(log_inv, first_escape, 1)
    print(f"first escape time ~ {slope:.3f} log(1/scale) + {intercept:.2f}; linearisation at 0 predicts slope "
          f"1/|lambda_min| = {1 / rate:.3f}")
    for scale in scales:
        reached = [int(c) for (s, _), c in zip(members, cycles, strict=True) if s == scale]
        print(f"scale {scale:.1e}: cycles reached by t = 2e4, seeds {list(seeds)}: {reached}")

    print("drawing phase-diagram.png ...", flush=True)
    fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.4), constrained_layout=True)
    ax = axes[0]
    ax.scatter(log_inv, first_escape, s=14, color="tab:blue", label="runs (3 seeds per scale)")
    x = np.linspace(log_inv.min(), log_inv.max(), 50)
    ax.plot(x, slope * x + intercept, color="k", lw=1, label=f"fit: slope {slope:.2f}")
    ax.plot(x, x / rate + (intercept + (slope - 1 / rate) * log_inv.mean()), color="tab:red", ls="--", lw=1,
            label=f"1/|$\\lambda_{{min}}$(0)| = {1 / rate:.2f}")
    ax.set_xlabel("log(1 / init scale)")
    ax.set_ylabel("first escape time")
    ax.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.25), ncol=2)
    ax = axes[1]
    member_scales = np.array([s for s, _ in members])
    for k in range(max(len(e) for e in all_escapes)):
        pts = [(s, e[k]) for s, e in zip(member_scales, all_escapes, strict=True) if len(e) > k]
        ax.scatter(*zip(*pts, strict=True), s=14, label=f"escape {k + 1}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("init scale")
    ax.set_ylabel("escape time")
    ax.set_title(f"cycles reached by t = 2e4: {int(cycles.min())}-{int(cycles.max())}", fontsize=8)
    ax.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    save_figure(fig, "phase-diagram")


if __name__ == "__main__":  # the ensemble spawns worker processes
    main()
