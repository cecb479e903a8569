"""The default solver at the sizes of the full block (issue 22): does the size policy still pick well?

Configs (each a flow gflow users run):
- `demo-block`: the demo chain and init with pre-LayerNorm, a GELU MLP of width 32 and the residual
  stream (784 parameters, mean-field loss, t to 1e5);
- `demo-block-tied`: the same, tied embeddings and an unembedding bias (756 parameters);
- `makkuva`: examples/markov_binary.toml (a binary chain, the full block with learned positions,
  tied, 278 parameters, enumerated loss at T = 6, t to 2e4).

Contenders: gflow's default (by size: dense BDF up to 256 parameters, the Krylov BDF above),
the dense `GradientFlowBDF`, `Tsit5`, `Kvaerno4`, each warm (the compile is timed apart). Error:
the largest parameter error over the save grid relative to the largest parameter, against the default at
rtol 1e-9.

    .venv/bin/python benchmarks/full_block.py [--configs demo-block,makkuva] [--contenders default,Tsit5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import gflow

PI = (0.75, 0.19, 0.05, 0.01)


def setting(name: str):
    if name.startswith("demo-block"):
        spec = gflow.MarkovSpec.sticky(PI, 0.5, T=10)
        extra = dict(tied=True, unembed_bias=True) if name.endswith("tied") else {}
        cfg = gflow.TransformerConfig(d_model=8, layernorm="pre", mlp=32, residual=True, **extra)
        return spec, cfg, gflow.init_params(0, cfg, spec, scale=1e-3), 1e5, "meanfield"
    spec = gflow.MarkovSpec.binary(0.8, 0.6, T=6, positions="all")
    cfg = gflow.TransformerConfig(d_model=4, mlp=16, layernorm="pre", residual=True, value=True,
                                  positional="learned", tied=True, unembed_bias=True)
    return spec, cfg, gflow.init_params(0, cfg, spec, scale=1e-2), 2e4, "enumerate"


def run(spec, cfg, p0, t_end, loss, solver, rtol=1e-6, atol=1e-9):
    kw = dict(config=cfg, loss=loss, n_save=121, progress=False, rtol=rtol, atol=atol, max_steps=10**6)
    if solver != "default":
        kw["solver"] = solver
    tic = time.perf_counter()
    gflow.simulate(p0, spec, (0.0, t_end / 1e4), **kw)  # compiles (same shapes, same program)
    compile_s = time.perf_counter() - tic
    tic = time.perf_counter()
    traj = gflow.simulate(p0, spec, (0.0, t_end), **kw)
    return traj, time.perf_counter() - tic, compile_s


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", default="demo-block,demo-block-tied,makkuva")
    parser.add_argument("--contenders", default="default,GradientFlowBDF,Tsit5,Kvaerno4")
    args = parser.parse_args()
    for name in args.configs.split(","):
        spec, cfg, p0, t_end, loss = setting(name)
        n = gflow.ParamLayout.of(cfg, spec).size
        ref, _, _ = run(spec, cfg, p0, t_end, loss, "default", rtol=1e-9, atol=1e-12)
        scale = np.abs(ref.flat_params()).max()
        print(f"\n{name}: {n} parameters, default {gflow.solvers.default_solver(n)}, reference ok={ref.ok}")
        print("| solver | wall (s) | ratio to default | compile (s) | steps | error | status |")
        print("|---|---:|---:|---:|---:|---:|---|")
        base = None
        for solver in args.contenders.split(","):
            traj, wall, compile_s = run(spec, cfg, p0, t_end, loss, solver)
            base = wall if base is None else base
            m = min(len(traj), len(ref))
            err = np.abs(traj.flat_params()[:m] - ref.flat_params()[:m]).max() / scale
            print(f"| {solver} | {wall:.2f} | {wall / base:.2f} | {compile_s:.1f} | "
                  f"{traj.stats['num_accepted_steps']} | {err:.2g} | {traj.status} |", flush=True)


if __name__ == "__main__":
    main()
