"""Makkuva et al. ("Attention with Markov", ICLR 2025) with the exact gradient flow.

Binary chains P = [[1-p, p], [q, 1-q]] over a grid of (p, q), the full block (pre-LayerNorm,
attention with a value path, GELU MLP, final LayerNorm, unembedding bias, learned positions), tied
and untied embeddings, small initialisation. For each cell:

- the Hessian at the *unigram point* (every weight 0, LayerNorm gains 1, b_U = log pi: the model
  predicts the stationary law whatever the context; a critical point of the loss) - its smallest
  eigenvalue and how many are negative;
- where the small-init flow ends, as the fraction of the gap from the unigram entropy H(pi) to the
  entropy rate that it closes (1: the bigram predictor; 0: stuck at unigram), and when it crosses
  half of that gap.

Their claim: with tying and p + q > 1 the unigram point is a local minimum and flows stay there;
untied it is a saddle and flows reach the entropy rate. Writes markov-binary.png/.pdf and prints the
table (docs/tasks.md reads it). `--quick` runs a 3 x 3 grid. The cells run on every CPU core.
"""

import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

GRID = (0.2, 0.4, 0.5, 0.6, 0.8)
QUICK_GRID = (0.2, 0.5, 0.8)
T, D_MODEL, MLP, SCALE, T_END = 6, 4, 16, 1e-2, 2e4


def config(tied: bool):
    import gflow

    return gflow.TransformerConfig(d_model=D_MODEL, mlp=MLP, layernorm="pre", activation="gelu", residual=True,
                                   value=True, positional="learned", tied=tied, unembed_bias=True)


def unigram_point(spec, cfg):
    """Every weight zero, LayerNorm gains one, b_U = log pi: the logits are log pi at every position."""
    import gflow

    shapes = gflow.model.param_shapes(cfg, spec)
    weights = {name: jnp.zeros(shape) for name, shape in shapes.items()}
    weights.update({name: jnp.ones(shape) for name, shape in shapes.items() if name.endswith("_w")})
    weights["b_U"] = jnp.log(jnp.asarray(spec.stationary()))
    return gflow.TransformerParams(**weights)


def cell(p: float, q: float, tied: bool) -> dict:
    import gflow

    spec = gflow.MarkovSpec.binary(p, q, T=T, positions="all")
    cfg = config(tied)
    lin = gflow.analysis.linearize(unigram_point(spec, cfg), spec, cfg, loss="enumerate", method="dense")
    traj = gflow.simulate(gflow.init_params(0, cfg, spec, scale=SCALE), spec, (0.0, T_END), config=cfg,
                          loss="enumerate", n_save=121, progress=False)
    unigram, rate = spec.unigram_entropy(), spec.conditional_entropy()
    gap = unigram - rate
    closed = (unigram - traj.loss[-1]) / gap if gap > 1e-9 else np.nan
    half = np.flatnonzero(traj.loss < unigram - 0.5 * gap) if gap > 1e-9 else []
    return {"p": p, "q": q, "tied": tied, "lambda_min": float(lin.eigenvalues[0]), "negative": lin.saddle_index,
            "lambda_max": float(lin.eigenvalues[-1]),
            "closed": float(closed), "half_time": float(traj.times[half[0]]) if len(half) else np.inf,
            "final": float(traj.loss[-1]), "unigram": unigram, "rate": rate, "status": str(traj.status)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 3 x 3 grid")
    parser.add_argument("--out", default="markov-binary", help="figure path without extension")
    args = parser.parse_args()
    grid = QUICK_GRID if args.quick else GRID
    jobs = [(p, q, tied) for tied in (True, False) for p in grid for q in grid]
    tic = time.perf_counter()
    with ProcessPoolExecutor(max_workers=multiprocessing.cpu_count(),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(cell, *zip(*jobs, strict=True)))
    print(f"{len(jobs)} flows in {time.perf_counter() - tic:.0f} s")
    print("| tied | p | q | p + q | lambda_min at unigram | negative | gap closed | half-gap time |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['tied']} | {r['p']} | {r['q']} | {r['p'] + r['q']:.1f} | {r['lambda_min']:.3g} | "
              f"{r['negative']} | {r['closed']:.3f} | {r['half_time']:.3g} |")

    import gflow.plot

    fig, axes = plt.subplots(2, 2, figsize=(10, 8.5), constrained_layout=True)
    n = len(grid)
    x_line = np.interp(1 - np.array(grid), grid, range(n))  # p + q = 1 on the cells' index axes
    for col, tied in enumerate((True, False)):
        rows = [r for r in results if r["tied"] == tied]
        # a flow that never got half-way is drawn at the horizon, labelled "stuck"
        when = np.log10([min(r["half_time"], T_END) if np.isfinite(r["closed"]) else np.nan
                         for r in rows]).reshape(n, n)
        stuck = np.array([not np.isfinite(r["half_time"]) and np.isfinite(r["closed"]) for r in rows]).reshape(n, n)
        # eigenvalues within round-off of zero (1e-8 of the largest) print as 0: the Hessian is then PSD
        lam = np.array([0.0 if abs(r["lambda_min"]) <= 1e-8 * abs(r["lambda_max"]) else r["lambda_min"]
                        for r in rows]).reshape(n, n)
        negative = np.array([r["negative"] for r in rows]).reshape(n, n)
        name = "tied" if tied else "untied"
        panels = ((when, f"{name}: log10 of the time to close half of\nH(pi) - entropy rate (small init)",
                   "viridis", (-1, np.log10(T_END)),
                   lambda i, j: "i.i.d." if np.isnan(when[i, j]) else
                   ("stuck" if stuck[i, j] else f"{when[i, j]:.1f}")),
                  (np.sign(lam) * np.log10(1 + np.abs(lam)), f"{name}: smallest Hessian eigenvalue at the unigram "
                   "point\n(colour: sign(l) log10(1 + |l|); text: l, negative count)", "coolwarm", (-2.5, 2.5),
                   lambda i, j: f"{lam[i, j]:.2g}\n{negative[i, j]} neg." if lam[i, j] < 0 else "0\nPSD"))
        for row, (values, title, cmap, limits, text) in enumerate(panels):
            ax = axes[row, col]
            im = ax.imshow(np.ma.masked_invalid(values), origin="lower", cmap=cmap, vmin=limits[0], vmax=limits[1])
            ax.set_facecolor("0.85")
            ax.set_xticks(range(n), [str(q) for q in grid])
            ax.set_yticks(range(n), [str(p) for p in grid])
            ax.set_xlabel("q (switch 1 -> 0)")
            ax.set_ylabel("p (switch 0 -> 1)")
            ax.set_title(title, fontsize=9)
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, text(i, j), ha="center", va="center", fontsize=7.5,
                            bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.75))
            ax.plot(x_line, range(n), "k--", lw=1.2)
            fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"Binary chains, full block, exact flow from scale-{SCALE:g} initialisation to t = {T_END:g} "
                 "(dashed: p + q = 1)", fontsize=10)
    written = gflow.plot.save_figure(fig, args.out)
    print("wrote", ", ".join(written))


if __name__ == "__main__":
    main()
