"""What the Krylov regime's pieces cost inside a compiled loop, where the solvers call them.

A single jitted call also pays its dispatch (10-30 µs here), which is most of a small flow's
gradient, so per-call timings overstate what a step spends. This script times each piece as the body of
a `jax.lax.fori_loop` (one thread, as gflow's solves run), on problems C, F and D of `scale.py`:

- the gradient (the vector field) and an exact Hessian-vector product (`jax.jvp` of it);
- one iteration of lineax's CG (on a diagonal matrix: its vector work alone), and the kept-pairs
  preconditioner of `GradientFlowKrylovBDF` at 24 float32 rows;
- one renewal of the kept eigenpairs (`LANCZOS_STEPS` Lanczos steps with exact products).

docs/performance.md ("D and F counted in gradients") uses these to split a run's time into gradients
and the rest.

    .venv/bin/python benchmarks/loop_costs.py [--problems C,F,D]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def best_per_call(fn, arg, calls: int, repeats: int = 5) -> float:
    """The fastest of `repeats` runs of the jitted loop `fn(arg)`, per call of its body, in ms."""
    import jax

    jax.block_until_ready(fn(arg))
    best = np.inf
    for _ in range(repeats):
        tic = time.perf_counter()
        jax.block_until_ready(fn(arg))
        best = min(best, time.perf_counter() - tic)
    return best / calls * 1e3


def costs(problem: str) -> dict:
    import diffrax
    import jax
    import jax.numpy as jnp
    import lineax as lx
    from scale import PROBLEMS, setting

    import gflow
    from gflow.solvers._krylov import KEPT_PAIRS, LANCZOS_STEPS, _hessian_product, _two_norm, lanczos_eigenpairs

    spec, config, p0 = setting(**PROBLEMS[problem])
    layout = gflow.ParamLayout.of(config, spec)
    field = gflow.GradientField(gflow.loss_function(spec, config, "meanfield"), layout)
    y0 = layout.flatten(p0) * 300.0  # away from the small start, where the loss is nearly quadratic
    n = y0.shape[0]
    calls = 2000 if n < 10_000 else 400
    v0 = jnp.cos(jnp.arange(n) * 1.3)

    def looped(body, count=calls):
        return jax.jit(lambda x: jax.lax.fori_loop(0, count, lambda i, x: x + 1e-12 * body(x), x))

    out = {"parameters": n}
    out["gradient"] = best_per_call(looped(lambda y: field(0.0, y, None)), y0, calls)
    out["exact product"] = best_per_call(looped(lambda v: jax.jvp(lambda x: field(0.0, x, None), (y0,), (v,))[1]),
                                         v0, calls)

    rng = np.random.default_rng(0)
    diagonal = jnp.asarray(np.logspace(0, 4, n))
    rows = jnp.asarray(np.linalg.qr(rng.normal(size=(n, KEPT_PAIRS)))[0].T, jnp.float32)
    weights = jnp.full(KEPT_PAIRS, -0.9, jnp.float32)
    structure = jax.ShapeDtypeStruct((n,), y0.dtype)
    tags = (lx.symmetric_tag, lx.positive_semidefinite_tag)

    def cg(b, preconditioned):
        options = {"y0": b}
        if preconditioned:
            options["preconditioner"] = lx.FunctionLinearOperator(
                lambda v: v + (rows.T @ ((rows @ v.astype(jnp.float32)) * weights)).astype(v.dtype), structure, tags)
        solver = lx.CG(rtol=1e-14, atol=0.0, norm=_two_norm, max_steps=10, stabilise_every=None)  # the solver's test
        return lx.linear_solve(lx.FunctionLinearOperator(lambda v: diagonal * v, structure, tags), b, solver,
                               options=options, throw=False).value

    solves = calls // 10
    plain = best_per_call(looped(lambda b: cg(b, False), solves), v0, solves * 11)
    preconditioned = best_per_call(looped(lambda b: cg(b, True), solves), v0, solves * 11)
    out["CG iteration, vectors"] = plain
    out["preconditioner, 24 float32 rows"] = preconditioned - plain

    terms = diffrax.ODETerm(field)
    renewals = 10

    def renewal(y):
        basis, _ = lanczos_eigenpairs(_hessian_product(terms, 0.0, y, None), n, LANCZOS_STEPS, y.dtype, KEPT_PAIRS)
        return basis[0]

    out["Lanczos renewal"] = best_per_call(looped(renewal, renewals), y0, renewals, repeats=3)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", default="C,F,D")
    args = ap.parse_args()
    import jax

    jax.config.update("jax_enable_x64", True)
    from gflow.common import _threads  # noqa: F401  (gflow's one-thread setting for XLA's CPU operations)

    rows = [costs(p) for p in args.problems.split(",")]
    names = [k for k in rows[0] if k != "parameters"]
    print("| problem (parameters) | " + " | ".join(f"{k} (ms)" for k in names) + " |")
    print("|---|" + "---:|" * len(names))
    for p, r in zip(args.problems.split(","), rows, strict=True):
        print(f"| {p} ({r['parameters']:,}) | " + " | ".join(f"{r[k]:.4f}" for k in names) + " |")


if __name__ == "__main__":
    main()
