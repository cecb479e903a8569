"""The README's example: the focus-dilution chain, small initialisation, mean-field loss, t to 1e5."""

import jax
import numpy as np

import gflow

spec = gflow.MarkovSpec.sticky(pi=[0.75, 0.19, 0.05, 0.01], lam=0.5, T=10)
config = gflow.TransformerConfig(d_model=8)
params0 = gflow.init_params(jax.random.key(0), config, spec, scale=1e-3)

traj = gflow.simulate(params0, spec, (0.0, 1e5), config=config, loss="meanfield")
print(f"loss {traj.loss[0]:.4f} (log 4 = {np.log(4):.4f}) -> {traj.loss[-1]:.4f} "
      f"(entropy rate {spec.entropy_rate():.4f}); {traj.status}: {traj.stats}")
print(gflow.analysis.stage_table(gflow.analysis.detect_stages(traj)))
