"""Full-batch gradient descent in PyTorch (CPU) on gflow's exact type-level loss (meanfield or counts).

The loss is written again in PyTorch from the same states gflow enumerates (query token, key-type
weights, state probability, next-token law), so this is also an independent check of gflow's JAX
loss: `check_against_jax` compares value and gradient before any timing. Only the architectures
the type-level losses cover (no positional encoding) are supported.
"""

from __future__ import annotations

import time

import numpy as np
import torch

import gflow


def _tensors(params: gflow.TransformerParams) -> dict[str, torch.Tensor]:
    names = ("W_E", "W_Q", "W_K", "W_V", "W_O", "W_U")
    return {n: torch.tensor(np.asarray(getattr(params, n)), dtype=torch.float64, requires_grad=True)
            for n in names if getattr(params, n, None) is not None}


def type_loss(w: dict[str, torch.Tensor], data, config: gflow.TransformerConfig) -> torch.Tensor:
    """$\\sum_i p_i\\, CE(target_i, logits(query_i, keys_i))$ with the model of gflow's type-level forward pass."""
    q = torch.einsum("ad,kde->kae", w["W_E"], w["W_Q"])
    k = torch.einsum("ad,kde->kae", w["W_E"], w["W_K"])
    scores = config.score_scale * torch.einsum("kae,kbe->kab", q, k)[:, data["query"], :]
    kw = data["key_weights"]
    logw = torch.where(kw > 0, torch.log(torch.where(kw > 0, kw, torch.ones_like(kw))), -torch.inf)
    alpha = torch.softmax(scores + logw[None], dim=-1)
    if config.value:
        v = torch.einsum("ad,kde,kef->kaf", w["W_E"], w["W_V"], w["W_O"])
    else:
        v = w["W_E"].expand(config.n_heads, *w["W_E"].shape)
    z = torch.einsum("ksb,kbd->sd", alpha, v)
    if config.residual:
        z = z + w["W_E"][data["query"]]
    logits = z @ w["W_U"]
    return -(data["weights"] * (data["targets"] * torch.log_softmax(logits, dim=-1)).sum(-1)).sum()


def type_data(loss_fn) -> dict[str, torch.Tensor]:
    d = loss_fn.data
    return {"query": torch.tensor(np.asarray(d.query), dtype=torch.long),
            **{n: torch.tensor(np.asarray(getattr(d, n)), dtype=torch.float64)
               for n in ("key_weights", "weights", "targets")}}


def check_against_jax(params, loss_fn, config) -> float:
    """Largest relative difference between the PyTorch and JAX loss gradients (and loss) at `params`."""
    import jax

    w = _tensors(params)
    value = type_loss(w, type_data(loss_fn), config)
    value.backward()
    jax_value, jax_grad = jax.value_and_grad(loss_fn)(params)
    diffs = [abs(value.item() - float(jax_value)) / abs(float(jax_value))]
    for name, t in w.items():
        g = np.asarray(getattr(jax_grad, name))
        diffs.append(float(np.abs(t.grad.numpy() - g).max() / max(np.abs(g).max(), 1e-300)))
    return max(diffs)


def gradient_descent(params, loss_fn, config, lr: float, steps: int) -> tuple[dict[str, np.ndarray], float]:
    """`steps` full-batch GD steps with `torch.optim.SGD`; returns the final weights and the wall time."""
    w = _tensors(params)
    data = type_data(loss_fn)
    opt = torch.optim.SGD(list(w.values()), lr=lr)
    tic = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        type_loss(w, data, config).backward()
        opt.step()
    wall = time.perf_counter() - tic
    return {n: t.detach().numpy().copy() for n, t in w.items()}, wall
