"""What a dense Hessian renewal could cost: the parts, timed alone (issue 23, docs/performance.md).

The dense BDF renews its kept Hessian as one `eigh` (every Newton solve is then two products with
the eigenvectors, for any step size). A factorisation-based renewal (CVODE's: a Jacobian and an LU)
is cheaper to form but costs more per solve and must be redone when the step size changes. This
script times every candidate part on the Hessian of a benchmark flow at its initial state, so that
the choice can be read off in one table:

    .venv/bin/python benchmarks/renewal_parts.py [--problem A|E] [--repeats 200]

Each part is one `jax.jit` program, timed as the best of five rounds of `--repeats` calls. With
`--in-run`, the same parts are also priced inside the dense BDF's run to t = 1e5 (rtol 1e-6): the run
is repeated with every renewal doing its `eigh`, or its Hessian, a second time, and the extra wall
divided by the renewals is what that part costs there (caches and the loop around it included).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)


def best_time(fn, *args, repeats: int) -> float:
    """Seconds per call of the jitted `fn`: the best of five rounds of `repeats` calls."""
    compiled = jax.jit(fn)
    jax.block_until_ready(compiled(*args))
    rounds = []
    for _ in range(5):
        tic = time.perf_counter()
        for _ in range(repeats):
            out = compiled(*args)
        jax.block_until_ready(out)
        rounds.append((time.perf_counter() - tic) / repeats)
    return min(rounds)


def in_run_costs(spec, config, p0, rounds: int = 2) -> None:
    """The wall of the dense BDF's run with each renewal's `eigh` or Hessian done twice, against the
    plain run (alternating, `rounds` times each): the extra per renewal is the part's cost in the run."""
    import gflow

    class Doubled(gflow.solvers.GradientFlowBDF):
        twice: str = "nothing"

        def kept_eigenpairs(self, terms, t, y, args):
            def hessian(x):
                jacobian = jax.jacfwd(lambda z: terms.vf(t, z, args))(x)
                return -0.5 * (jacobian + jacobian.T)

            h = hessian(y)
            basis, curvature = jax.lax.linalg.eigh(h, symmetrize_input=False)
            # the repeat depends on the first result, so that XLA cannot merge the two
            if self.twice == "eigh":
                curvature = curvature + 0.0 * jax.lax.linalg.eigh(h + 1e-300 * basis[0, 0])[1][0]
            elif self.twice == "Hessian":
                curvature = curvature + 0.0 * hessian(y + 1e-300 * basis[0, 0])[0, 0]
            return basis, curvature, jnp.zeros((), jnp.int32)

    grid = gflow.default_save_times((0.0, 1e5), 61)
    walls = {}
    for _ in range(rounds):
        for twice in ("nothing", "eigh", "Hessian"):
            kw = dict(config=config, loss="meanfield", solver=Doubled(rtol=1e-6, atol=1e-9, twice=twice),
                      rtol=1e-6, atol=1e-9, progress=False, chunk_size=6)
            gflow.simulate(p0, spec, (0.0, float(grid[6])), save_times=grid[1:7], **kw)  # compiles
            tic = time.perf_counter()
            run = gflow.simulate(p0, spec, (0.0, 1e5), save_times=grid[1:], **kw)
            walls.setdefault(twice, []).append(time.perf_counter() - tic)
            renewals = int(run.stats["num_hessian_evaluations"])
    plain = min(walls["nothing"])
    print(f"in the dense BDF's run: {plain:.3f} s, {renewals} renewals; per renewal, in milliseconds:")
    for twice in ("eigh", "Hessian"):
        print(f"  {twice:<34} {(min(walls[twice]) - plain) / renewals * 1e3:9.2f}")


def main() -> None:
    import gflow

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problem", default="E", choices=("A", "E"), help="the dense-regime flows of solvers.py, scale.py")
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--in-run", action="store_true", help="also price eigh and the Hessian inside a run")
    args = ap.parse_args()

    if args.problem == "A":
        from solvers import problem

        spec, config, p0, _, _ = problem("A")
    else:
        from scale import PROBLEMS, setting

        spec, config, p0 = setting(**PROBLEMS["E"])
    layout = gflow.ParamLayout.of(config, spec)
    field = gflow.GradientField(gflow.loss_function(spec, config, "meanfield"), layout)
    y = jnp.asarray(layout.flatten(p0))
    n = y.shape[0]

    def gradient(x):
        return field(0.0, x, None)

    def hessian(x):
        jacobian = jax.jacfwd(gradient)(x)
        return -0.5 * (jacobian + jacobian.T)

    h = hessian(y)
    curvature = jnp.linalg.eigvalsh(h)
    # the Newton matrix at the largest step the unstable-direction limit allows (h mu <= 0.5)
    c = 0.5 / max(float(-curvature.min()), 1e-12)
    newton = jnp.eye(n) + c * h
    basis = jnp.linalg.eigh(h)[1]
    factor = jnp.linalg.cholesky(newton)
    rhs = jnp.asarray(np.random.default_rng(0).standard_normal(n))
    eye = jnp.eye(n)

    parts = [
        ("gradient", gradient, (y,)),
        ("Hessian (jacfwd)", hessian, (y,)),
        ("eigh", lambda a: jax.lax.linalg.eigh(a, symmetrize_input=False), (h,)),
        ("eigenvalues only", jnp.linalg.eigvalsh, (h,)),
        ("Cholesky", jnp.linalg.cholesky, (newton,)),
        ("LU", jax.scipy.linalg.lu_factor, (newton,)),
        ("inverse", jnp.linalg.inv, (newton,)),
        ("triangular inverse", lambda f: jax.lax.linalg.triangular_solve(f, eye, left_side=True, lower=True),
         (factor,)),
        ("solve: two products with Q", lambda q, r: q @ ((r @ q) / (1.0 + c * curvature)), (basis, rhs)),
        ("solve: Cholesky (two triangular)", lambda f, r: jax.scipy.linalg.cho_solve((f, True), r), (factor, rhs)),
        ("solve: one product (an inverse)", lambda a, r: a @ r, (newton, rhs)),
    ]
    print(f"problem {args.problem}: {n} parameters; microseconds per call")
    for name, fn, fn_args in parts:
        print(f"  {name:<34} {best_time(fn, *fn_args, repeats=args.repeats) * 1e6:9.1f}")
    if args.in_run:
        in_run_costs(spec, config, p0)


if __name__ == "__main__":
    main()
