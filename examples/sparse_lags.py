"""The exact gradient flow of a three-head Transformer on a sparse high-order task (Yüksel, Alvarez
Lucendo, Flammarion 2026; docs/tasks.md): the ladder of restricted-class levels, heads competing for
the strongest lag block and then specialising. Writes the event table and the figures into
./sparse-lags/ (a few minutes on two CPU cores).

    python examples/sparse_lags.py [--V 6] [--seed 0] [--t1 1e5] [--out sparse-lags]
"""

import argparse
import os

import jax

import gflow
from gflow.analysis import detect_lag_events, lag_probes, stage_table
from gflow.plot import lag_attention_maps, lag_figure, save_figure

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--V", type=int, default=6, help="vocabulary size")
parser.add_argument("--spans", type=int, nargs="+", default=[1, 1, 1], help="lag-block spans, most recent first")
parser.add_argument("--m", type=float, default=2.0, help="strength ratio between consecutive blocks")
parser.add_argument("--scale", type=float, default=4.0, help="strength of the weakest block")
parser.add_argument("--seed", type=int, default=0, help="seed of the teacher and of the initial weights")
parser.add_argument("--init", type=float, default=0.1, help="initial weight scale")
parser.add_argument("--d-model", type=int, default=6)
parser.add_argument("--t1", type=float, default=1e4, help="end of the flow")
parser.add_argument("--out", default="sparse-lags")
args = parser.parse_args()

teacher_key, init_key = jax.random.split(jax.random.key(args.seed))
spec = gflow.SparseLagSpec.random(teacher_key, args.V, args.spans, m=args.m, scale=args.scale)
config = gflow.TransformerConfig(n_heads=3, d_model=args.d_model, value=True, positional="learned")
params0 = gflow.init_params(init_key, config, spec, scale=args.init)
traj = gflow.simulate(params0, spec, (0.0, args.t1), config=config, loss="enumerate", n_save=241,
                      checkpoint=os.path.join(args.out, "trajectory.npz"))
print(traj)

probes = lag_probes(traj, spec)
events = detect_lag_events(traj, spec, probes)
levels = ", ".join(f"{k} blocks {x:.4f}" for k, x in enumerate(probes.levels))
print(f"class levels: {levels}\n")
print(stage_table(events))
save_figure(lag_figure(probes, events, title=f"V = {spec.V}, spans {spec.spans}, m = {args.m}, seed {args.seed}"),
            os.path.join(args.out, "ladder"))
save_figure(lag_attention_maps(probes, events), os.path.join(args.out, "attention-maps"))
