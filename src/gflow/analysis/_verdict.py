"""How a run ends: converged to the best loss, at a minimum above it, or stuck at a saddle.

A run that ends on a plateau above the best achievable loss is linearised at its last state. With
negative curvature there (saddle index > 0) it is *stuck at a saddle*, not converged: the unstable
component $c$ grows like $e^{\\mu t}$, and the linearisation predicts the escape when $c$ has grown
from its present size, $|v^\\top \\nabla L| / \\mu$ (the gradient along the unstable eigenvector $v$ is
$-\\mu$ times the deviation), to the size of a typical parameter, $\\|\\theta\\| / \\sqrt{n}$: an
order-of-magnitude estimate, which assumes the Hessian stays as it is.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ..record import RunStatus, Trajectory
from ._hessian import linearize_flat

CONVERGED = 1e-3
"""A final loss within this fraction of the run's possible drop (initial loss minus best loss) of
the best loss counts as converged: closer than a figure of the loss can show."""


def final_verdict(traj: Trajectory) -> dict:
    """A sentence and the numbers behind it, for the plateau a run ends on."""
    loss = float(traj.loss[-1])
    population = traj.record.loss.method in ("enumerate", "counts", "meanfield")
    best = traj.spec.best_loss() if population else None
    if best is not None and loss - best <= CONVERGED * max(float(traj.loss[0]) - best, 1e-300):
        return {"verdict": f"converged to the best possible loss ({best:.5f})", "converged": True}
    above = "" if best is None else f", {loss - best:.3g} above the best possible loss {best:.5f}"
    if traj.status != RunStatus.SUCCESS:  # the flow goes on past this point: nothing to conclude about it
        return {"verdict": f"the run stopped here ({traj.status.value}, at t = {float(traj.times[-1]):.4g}){above}; "
                           "where the flow goes from here was not computed", "converged": False}
    fn, layout = traj.loss_function(), traj.layout
    y = jnp.asarray(traj.flat_params()[-1])
    lin = linearize_flat(fn, layout, y)
    if lin.saddle_index == 0:
        return {"verdict": f"ends near a minimum (no negative curvature){above}", "converged": False,
                "saddle_index": 0}
    v = lin.eigenvectors[:, 0]
    grad = np.asarray(jax.grad(lambda w: fn(layout.unflatten(w)))(y))
    now = abs(float(v @ grad)) / lin.escape_rate
    target = float(np.linalg.norm(np.asarray(y))) / math.sqrt(len(y))
    predicted = float(traj.times[-1]) + (math.log(target / now) / lin.escape_rate if 0 < now < target else 0.0)
    return {"verdict": f"stuck at a saddle of index {lin.saddle_index} (lambda_min = {lin.eigenvalues[0]:.3g}){above}; "
                       f"the linearisation predicts an escape near t = {predicted:.3g}",
            "converged": False, "saddle_index": lin.saddle_index, "lambda_min": float(lin.eigenvalues[0]),
            "predicted_escape": predicted}
