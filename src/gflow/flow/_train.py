"""Discrete training (GD, SGD, momentum, Adam) on the same losses as the flow.

Full-batch GD on the population loss is the explicit Euler scheme of the gradient flow with step
`lr`, so its step `k` sits at flow time $t = \\text{lr}\\,k$. Minibatch SGD on sequences drawn
fresh from the chain each step is an unbiased noisy version of it. Momentum (heavy ball, $\\beta$)
moves at the effective rate $\\text{lr}/(1-\\beta)$, so its time is $\\text{lr}\\,k/(1-\\beta)$. Adam is
the flow of a different vector field (docs/compare.md); its time is $\\text{lr}\\,k$ by convention.

Steps between two saved steps run inside one compiled `lax.fori_loop`; only the save grid (log-spaced
in steps) is visited from Python, so long runs stay small and fast.
"""

from __future__ import annotations

import math
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..common import as_prng_key, check_positive, save_point_loop
from ..data import AbstractDataSource
from ..losses import LossFunction, LossSpec, check_dataset, cross_entropy, loss_spec
from ..model import TransformerConfig, TransformerParams, check_params, sequence_logits
from ..record import RunRecord, RunStatus, TrainingSpec, Trajectory

MOMENTUM = 0.9
OPTIMIZERS = ("gd", "sgd", "momentum", "adam")


def make_optimizer(optimizer, lr: float) -> tuple[optax.GradientTransformation, str, float]:
    """The optax transformation, its name, and the flow time of one step."""
    if isinstance(optimizer, optax.GradientTransformation):
        return optimizer, "optax", lr
    if optimizer in ("gd", "sgd"):
        return optax.sgd(lr), optimizer, lr
    if optimizer == "momentum":
        return optax.sgd(lr, momentum=MOMENTUM), optimizer, lr / (1 - MOMENTUM)
    if optimizer == "adam":
        return optax.adam(lr), optimizer, lr
    raise ValueError(f"`optimizer` must be one of {OPTIMIZERS} or an optax.GradientTransformation; got {optimizer!r}.")


def save_steps(steps: int, n_save: int) -> np.ndarray:
    """Step 0 and up to `n_save - 1` distinct log-spaced steps ending at `steps`."""
    points = np.logspace(0, math.log10(steps), max(n_save - 1, 1))
    points[-1] = steps  # a one-point logspace is its start, not its end
    grid = np.unique(np.round(points).astype(np.int64))
    return np.concatenate([[0], grid[grid >= 1]])


class _Batches(eqx.Module):
    """Fresh minibatches: drawn from the data source (online SGD) or from a fixed dataset."""

    source: AbstractDataSource
    dataset: jax.Array | None
    batch_size: int = eqx.field(static=True)

    def draw(self, key):
        if self.dataset is not None:
            idx = jax.random.randint(key, (self.batch_size,), 0, self.dataset.shape[0])
            return self.dataset[idx]
        return self.source.sample(key, self.batch_size)


def _minibatch_loss(params, seqs, config: TransformerConfig, position_weights):
    logits = sequence_logits(params, seqs[:, :-1], config)
    targets = jax.nn.one_hot(seqs[:, 1:], logits.shape[-1], dtype=logits.dtype)
    return jnp.mean(cross_entropy(targets, logits) @ position_weights)


@eqx.filter_jit
def _advance(params, opt_state, key, n_steps, optimizer, population: LossFunction, batches: _Batches | None,
             position_weights):
    def body(_, carry):
        params, opt_state, key = carry
        if batches is None:
            grads = jax.grad(population)(params)
        else:
            key, sub = jax.random.split(key)
            grads = jax.grad(_minibatch_loss)(params, batches.draw(sub), population.config, position_weights)
        # optax mixes Python floats with int32 step counts (Adam's bias correction); let that promote
        # normally even where a caller runs with strict promotion (as our test suite does).
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, key

    params, opt_state, key = jax.lax.fori_loop(0, n_steps, body, (params, opt_state, key))
    loss, grads = jax.value_and_grad(population)(params)
    return params, opt_state, key, loss, optax.tree.norm(grads)


def train(params0: TransformerParams, spec: AbstractDataSource, config: TransformerConfig | None = None, *,
          optimizer="gd", lr: float, steps: int, batch_size: int | None = None, key=None, dataset=None,
          loss: str | LossSpec = "auto", n_save: int = 121, progress: bool | None = None) -> Trajectory:
    """Train with a discrete optimiser and record it as a `Trajectory` comparable with the flow.

    **Arguments:**

    - `optimizer`: `"gd"`, `"sgd"`, `"momentum"` (heavy ball, beta 0.9), `"adam"`, or an optax
      `GradientTransformation`.
    - `lr`, `steps`: learning rate and number of steps.
    - `batch_size`: `None` for full-batch steps on the population loss chosen by `loss` (the same
      loss the flow integrates); an integer for minibatches of sequences, drawn fresh from the data
      source every step (online SGD) or, with `dataset` (int array `(N, T+1)`), from that dataset.
    - `key`: PRNG key or integer seed for the minibatches (required with `batch_size`).
    - `loss`: the population loss the run records and full-batch steps descend: a method name (see
      `gflow.loss_function`) or a `LossSpec` (a flow's `traj.record.loss`, to train on exactly its loss).

    **Returns:** a `Trajectory` saved at step 0 and `n_save - 1` log-spaced steps: `steps` holds the
    step indices, `times` the flow times (`lr * k`; `lr * k / (1 - beta)` for momentum), and
    `loss`/`grad_norm` the *population* loss and gradient norm at those steps.
    """
    config = TransformerConfig() if config is None else config
    check_params(params0, config, spec)
    lr = check_positive("lr", lr)
    steps = check_positive("steps", steps, integer=True)
    n_save = check_positive("n_save", n_save, integer=True)
    opt, name, dt = make_optimizer(optimizer, lr)
    population_spec = loss_spec(spec, config, loss)
    population = population_spec.build(spec, config)
    batches = None
    if batch_size is None:
        if dataset is not None or key is not None:
            raise ValueError("`dataset` and `key` are for minibatch training; set `batch_size` too.")
        key = jax.random.key(0)
    else:
        batch_size = check_positive("batch_size", batch_size, integer=True)
        if key is None:
            raise ValueError("`key` is required with `batch_size` (it draws the minibatches).")
        key = as_prng_key("key", key)
        if dataset is not None:
            dataset = jnp.asarray(check_dataset(dataset, spec))
        batches = _Batches(source=spec, dataset=dataset, batch_size=batch_size)
    rho = jnp.asarray(spec.position_weights())
    grid = save_steps(steps, n_save)
    record = RunRecord("discrete", spec, config, population_spec, (0.0, float(steps * dt)), grid * dt,
                       training=TrainingSpec(optimizer=name, lr=lr, steps=steps, batch_size=batch_size,
                                             time_per_step=dt,
                                             dataset_size=None if dataset is None else int(dataset.shape[0])))
    params, opt_state = params0, opt.init(params0)
    l0, g0 = jax.value_and_grad(population)(params0)
    saved_p, saved_l = [params0], [float(l0)]
    saved_g = [float(optax.tree.norm(g0))]
    status, message = RunStatus.SUCCESS, RunStatus.SUCCESS.describe("discrete", steps=steps, optimizer=name, lr=lr)
    tic = time.perf_counter()
    with save_point_loop(progress, len(grid) - 1) as loop:
        for k0, k1 in zip(grid[:-1], grid[1:], strict=True):
            params, opt_state, key, lval, gnorm = _advance(params, opt_state, key, jnp.asarray(k1 - k0), opt,
                                                           population, batches, rho)
            saved_p.append(params)
            saved_l.append(float(lval))
            saved_g.append(float(gnorm))
            loop.advance(1, f"step={k1} loss={float(lval):.5f}")
            if not math.isfinite(saved_l[-1]):
                status, message = RunStatus.NONFINITE, RunStatus.NONFINITE.describe("discrete", step=k1, lr=lr)
                break
    if loop.interrupted:
        status, message = RunStatus.INTERRUPTED, RunStatus.INTERRUPTED.describe("discrete",
                                                                               step=grid[len(saved_l) - 1])
    n = len(saved_l)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *saved_p)
    return Trajectory(times=grid[:n] * dt, params=stacked, loss=np.asarray(saved_l), grad_norm=np.asarray(saved_g),
                      record=record, stats={"num_steps": int(grid[n - 1]), "wall_time_s": time.perf_counter() - tic},
                      status=status, message=message, steps=grid[:n])

