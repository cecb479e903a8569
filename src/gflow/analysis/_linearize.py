"""Stage-wise linearisation: the Hessian of the loss at a point, and escape times from plateaus.

Near a critical point $\\theta^*$ the flow is $\\dot\\delta \\approx -H \\delta$, so the component of
$\\delta = \\theta - \\theta^*$ along an eigenvector with eigenvalue $\\lambda < 0$ grows like
$e^{|\\lambda| t}$. Leaving a plateau takes about $\\log(c_{exit} / c_{entry}) / |\\lambda|$ for the most
negative $\\lambda$: the prediction compared with the observed escape in `plateau_linearization`.
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._layout import ParamLayout
from .._loss import LossFunction, loss_function
from .._markov import MarkovSpec
from .._model import TransformerConfig, TransformerParams
from .._trajectory import Trajectory
from ._stages import Event, detect_stages

DENSE_LIMIT = 2000
"""Up to this many parameters the Hessian is assembled densely (n Hessian-vector products, one
symmetric eigendecomposition); above it, Lanczos with Hessian-vector products finds the extremes."""


@dataclasses.dataclass(frozen=True)
class Linearization:
    """The Hessian spectrum at a point.

    - `eigenvalues`: ascending (all of them when dense; the Ritz values when Lanczos).
    - `eigenvectors`: columns matching `eigenvalues` (flat parameter vectors).
    - `saddle_index`: eigenvalues below `-tol` (`tol` = 1e-8 of the largest magnitude): negative
      directions, 0 at a local minimum.
    - `escape_rate`: $|\\lambda_{min}|$ when negative, else 0: the growth rate of the unstable component.
    - `method`: `"dense"` or `"lanczos"`.
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    saddle_index: int
    escape_rate: float
    method: str


@eqx.filter_jit
def hessian_vector_product(fn: LossFunction, layout: ParamLayout, y, v):
    """$\\nabla^2 L(y)\\, v$ by forward-over-reverse differentiation. Compiled once per loss *shape*:
    the loss is an argument, so new chains, points and vectors reuse the compiled code."""
    return jax.jvp(jax.grad(lambda w: fn(layout.unflatten(w))), (y,), (v,))[1]


@eqx.filter_jit
def dense_hessian(fn: LossFunction, layout: ParamLayout, y):
    """The full Hessian of the loss at the flat point `y` (compiled once per loss shape)."""
    return jax.hessian(lambda w: fn(layout.unflatten(w)))(y)


def lanczos_extremes(matvec, n: int, k: int, key) -> tuple[np.ndarray, np.ndarray]:
    """`k` Lanczos steps with full reorthogonalisation; returns Ritz values (ascending) and vectors."""
    k = min(k, n)
    Q = np.zeros((n, k))
    alpha, beta = np.zeros(k), np.zeros(k)
    q = np.array(jax.random.normal(key, (n,), dtype=jnp.float64))
    q /= np.linalg.norm(q)
    for j in range(k):
        Q[:, j] = q
        w = np.array(matvec(jnp.asarray(q)))
        alpha[j] = q @ w
        w -= Q[:, : j + 1] @ (Q[:, : j + 1].T @ w)
        w -= Q[:, : j + 1] @ (Q[:, : j + 1].T @ w)  # twice is enough (Kahan)
        beta[j] = np.linalg.norm(w)
        if beta[j] < 1e-12 * max(1.0, abs(alpha[: j + 1]).max()):
            Q, alpha, beta = Q[:, : j + 1], alpha[: j + 1], beta[: j + 1]
            break
        q = w / beta[j]
    m = len(alpha)
    Tm = np.diag(alpha) + np.diag(beta[: m - 1], 1) + np.diag(beta[: m - 1], -1)
    vals, vecs = np.linalg.eigh(Tm)
    return vals, Q @ vecs


def linearize(params: TransformerParams, spec: MarkovSpec, config: TransformerConfig, *, loss: str = "auto",
              method: str = "auto", lanczos_steps: int = 80, key=None) -> Linearization:
    """Hessian of the population loss at `params`: spectrum, saddle index, escape rate.

    `method="dense"` assembles the Hessian (exact, for up to ~`DENSE_LIMIT` parameters);
    `"lanczos"` runs `lanczos_steps` of Lanczos on Hessian-vector products (extreme eigenvalues,
    accurate to many digits after a few dozen steps); `"auto"` picks by size.
    """
    fn = loss_function(spec, config, loss)
    return _linearize_flat(fn, ParamLayout.of(config, spec), ParamLayout.of(config, spec).flatten(params),
                           method=method, lanczos_steps=lanczos_steps, key=key)


def _linearize_flat(fn: LossFunction, layout: ParamLayout, y, *, method="auto", lanczos_steps=80, key=None):
    if method not in ("auto", "dense", "lanczos"):
        raise ValueError(f"`method` must be 'auto', 'dense' or 'lanczos'; got {method!r}.")
    n = layout.size
    if method == "auto":
        method = "dense" if n <= DENSE_LIMIT else "lanczos"
    if method == "dense":
        H = np.asarray(dense_hessian(fn, layout, y))
        vals, vecs = np.linalg.eigh(0.5 * (H + H.T))
    else:
        key = jax.random.key(0) if key is None else key
        vals, vecs = lanczos_extremes(lambda v: hessian_vector_product(fn, layout, y, v), n, lanczos_steps, key)
    tol = 1e-8 * max(abs(vals).max(), np.finfo(float).tiny)
    return Linearization(eigenvalues=vals, eigenvectors=vecs, saddle_index=int((vals < -tol).sum()),
                         escape_rate=float(max(-vals[0], 0.0)), method=method)


@dataclasses.dataclass(frozen=True)
class PlateauEscape:
    """Predicted against observed escape from one plateau (see the module docstring)."""

    plateau: int
    entry: float
    observed_escape: float
    predicted_escape: float
    saddle_index: int
    escape_rate: float
    lambda_min: float
    lambda_max: float
    spectrum: np.ndarray

    @property
    def ratio(self) -> float:
        """Predicted over observed plateau duration (1 is a perfect prediction)."""
        return (self.predicted_escape - self.entry) / max(self.observed_escape - self.entry, np.finfo(float).tiny)


def plateau_linearization(traj: Trajectory, events: list[Event] | None = None, *,
                          method: str = "auto") -> list[PlateauEscape]:
    """Linearise at every non-final plateau of `traj` and predict its escape time.

    The saddle is approximated by the state at the plateau's log-midpoint; the unstable component is
    the projection of $\\theta(t) - \\theta_{mid}$ on the most negative eigenvector, measured at
    plateau entry and at the observed escape. The prediction is entry + log(ratio) / rate.
    """
    events = detect_stages(traj) if events is None else events
    layout = ParamLayout.of(traj.config, traj.spec)
    fn = loss_function(traj.spec, traj.config, traj.settings.get("loss", "auto"))
    ys = np.asarray(jax.vmap(layout.flatten)(traj.params))
    out = []
    plateaus = [e for e in events if e.kind == "plateau" and not e.details["final"]]
    for p, e in enumerate(plateaus):
        a, b = e.details["start_index"], e.details["end_index"]
        t_a = max(traj.times[a], traj.times[traj.times > 0][0])
        mid_t = math.sqrt(t_a * traj.times[b])
        mid = int(np.argmin(np.abs(np.log(np.maximum(traj.times, 1e-300)) - math.log(mid_t))))
        lin = _linearize_flat(fn, layout, jnp.asarray(ys[mid]), method=method)
        v = lin.eigenvectors[:, 0]
        c_in = abs(v @ (ys[a] - ys[mid]))
        c_out = abs(v @ (ys[b] - ys[mid]))
        if lin.escape_rate > 0 and c_in > 0 and c_out > 0:
            predicted = float(traj.times[a] + math.log(c_out / c_in) / lin.escape_rate)
        else:
            predicted = math.inf
        out.append(PlateauEscape(plateau=p, entry=float(traj.times[a]), observed_escape=float(traj.times[b]),
                                 predicted_escape=predicted, saddle_index=lin.saddle_index,
                                 escape_rate=lin.escape_rate, lambda_min=float(lin.eigenvalues[0]),
                                 lambda_max=float(lin.eigenvalues[-1]), spectrum=lin.eigenvalues))
    return out


def linearization_table(rows: list[PlateauEscape]) -> str:
    """A Markdown table: per plateau, the Hessian's extremes and predicted against observed escape."""
    out = ["| plateau | entry | saddle index | lambda_min | lambda_max | predicted escape | observed escape | "
           "predicted/observed duration |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r.plateau} | {r.entry:.4g} | {r.saddle_index} | {r.lambda_min:.3g} | {r.lambda_max:.3g} | "
                   f"{r.predicted_escape:.4g} | {r.observed_escape:.4g} | {r.ratio:.2f} |")
    return "\n".join(out)
