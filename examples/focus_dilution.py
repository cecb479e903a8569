"""The demo from Python: simulate the focus-dilution setting, mark its stages, linearise at each
plateau, and draw the figures into ./focus-dilution/."""

import os

import jax

import gflow
from gflow.analysis import compute_metrics, detect_stages, linearization_table, plateau_linearization, stage_table
from gflow.plot import attention_figure, hessian_figure, overview_figure, save_figure

out = "focus-dilution"
spec = gflow.MarkovSpec.sticky(pi=[0.75, 0.19, 0.05, 0.01], lam=0.5, T=10)
config = gflow.TransformerConfig(d_model=8)
params0 = gflow.init_params(jax.random.key(0), config, spec, scale=1e-3)
traj = gflow.simulate(params0, spec, (0.0, 1e5), config=config, loss="meanfield", n_save=241,
                      checkpoint=os.path.join(out, "trajectory.npz"))

metrics = compute_metrics(traj)
events = detect_stages(traj, metrics=metrics)
plateaus = plateau_linearization(traj, events)
print(stage_table(events), "\n")
print(linearization_table(plateaus))

save_figure(overview_figure(metrics, events, entropy_rate=spec.entropy_rate(),
                            unigram_entropy=spec.unigram_entropy()), os.path.join(out, "overview"))
save_figure(attention_figure(metrics, events), os.path.join(out, "attention"))
save_figure(hessian_figure(plateaus), os.path.join(out, "hessian"))
