"""Large flows (issue 11): the matrix-free default against the alternatives, with memory and scaling.

Problem C: V = 16 sticky chain (lam = 0.5, pi_k proportional to k^-1.2), d_model = 32 (3,072
parameters), mean-field loss, initial scale 1e-3, t to 1e5.
Problem D: V = 32, d_model = 64, two heads with the value path (36,864 parameters), otherwise as C.

Problems E and F: two stiff flows that no solver setting was tuned on when they were added; G to J:
four more, fixed later for an audit (`PROBLEMS`).

A contender is a name, optionally with `@rtol` (`default@1e-7`, `cvode-gmres@1e-5`; atol is rtol *
1e-3): gflow's `default`, `dense`, `krylov`, `tsit5`, scipy's `lsoda`, `gd`, and SUNDIALS' CVODE
`cvode-dense`, `cvode-gmres`, `cvode-gmres-dq` (CVODE's own difference-quotient products),
`cvode-adams` (`cvode.py`); a final `:all` (`cvode-gmres@1e-8:all`) runs it with JAX's and OpenBLAS's
own thread counts instead of gflow's one thread. The table ends with each family's fastest run at most
as far from the reference as gflow's default: the ratio at equal accuracy.

Each contender runs in its own process (so that its peak memory is its own) under a wall-clock
budget; a contender that runs out of budget or steps is reported as such. Times are after
compilation (each process solves a short prefix first). Errors are against the BDF (dense up to 2,048
parameters, else Krylov) at rtol 1e-8 (its error at rtol 1e-6 is 100 times larger, so the reference's
own error is negligible);
event shifts compare the stage events found on each contender's 61 saved states with the
reference's (interpolated between saved points, the same rule for all). GD ("gd") runs at lr 0.1,
the rate papers use; its time to the horizon bounds from below GD at the flow's accuracy, which
needs a far smaller lr (problem A's table: about 2e-5).

    .venv/bin/python benchmarks/scale.py --problem C [--budget 900] [--contenders default,dense,tsit5,lsoda,gd]
    .venv/bin/python benchmarks/scale.py --scaling     # wall against parameter count, fitted exponent
    .venv/bin/python benchmarks/scale.py --crossover   # dense against Krylov BDF: where the default switches
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

CHUNK = 6
"""Save points per chunk (61 save times: 10 chunks, as `simulate`'s default)."""
ALL_THREADS = ":all"
"""A contender's suffix (`cvode-gmres@1e-8:all`): its process keeps JAX's and OpenBLAS's own thread
counts (`GFLOW_CPU_THREADS=all`)."""
GD_TIMED = 20_000
"""GD steps timed (its wall to the horizon is this time per step times t1 / lr)."""
PROBLEMS = {"C": dict(V=16, d=32, heads=1, value=False), "D": dict(V=32, d=64, heads=2, value=True),
            # two stiff flows no solver setting was tuned on (issue 23): a Dirichlet chain in the dense
            # regime, a near-uniform sticky chain with two heads in the Krylov regime
            "E": dict(V=6, d=8, heads=1, value=False, chain="dirichlet", alpha=0.3, T=8, seed=3),
            "F": dict(V=24, d=24, heads=2, value=False, exponent=0.3, lam=0.8, T=12, seed=5),
            # an audit of E and F, on which every solver change since has been measured: three settings
            # fixed (2026-12-07, eighth session) before any run, one in the dense regime, two in the Krylov
            "G": dict(V=7, d=6, heads=2, value=False, exponent=0.6, lam=0.7, T=9, seed=4),
            "H": dict(V=20, d=32, heads=1, value=True, exponent=0.8, lam=0.3, T=10, seed=13),
            "I": dict(V=5, d=8, heads=1, value=True, chain="dirichlet", alpha=0.8, T=12, seed=17),
            # H and I turned out to stay on their first plateau to t = 1e5 (no stage events): J was fixed
            # after them, again before any run, for a second stiff flow in the Krylov regime
            "J": dict(V=12, d=16, heads=2, value=True, exponent=1.0, lam=0.6, T=10, seed=9)}


def setting(V: int, d: int, heads: int, value: bool, chain: str = "sticky", exponent: float = 1.2,
            lam: float = 0.5, alpha: float = 0.5, T: int = 10, seed: int = 0):
    import jax

    import gflow

    if chain == "dirichlet":
        spec = gflow.MarkovSpec.dirichlet(jax.random.key(seed), V, alpha, T=T)
    else:
        pi = np.arange(1, V + 1) ** -exponent
        spec = gflow.MarkovSpec.sticky(pi=pi / pi.sum(), lam=lam, T=T)
    config = gflow.TransformerConfig(d_model=d, n_heads=heads, value=value)
    return spec, config, gflow.init_params(jax.random.key(seed), config, spec, scale=1e-3)


def gd_contender(p0, spec, config, t1: float, accuracy: float | None) -> dict:
    """Full-batch GD: at lr 0.1 (the rate papers use) timed on `GD_TIMED` steps and extrapolated to
    the horizon, a lower bound on GD at any smaller lr. With `accuracy` (the default solver's error):
    GD runs in full at lr 0.1 and 0.05, its largest relative parameter error against an rtol-1e-8
    flow at its own saved times is measured, and the lr (and time) at which it would reach
    `accuracy` is extrapolated with error ~ lr^max(fitted, 1), the choice that favours GD."""
    import gflow

    def gd(lr, steps, n_save):
        return gflow.train(p0, spec, config, optimizer="gd", lr=lr, steps=steps, loss="meanfield", n_save=n_save)

    gd(0.1, 10, 2)  # compiles
    steps = min(GD_TIMED, int(t1 / 0.1))
    tic = time.perf_counter()
    gd(0.1, steps, 2)
    per_step = (time.perf_counter() - tic) / steps
    out = dict(wall=per_step * t1 / 0.1, ok=True, solver="GD lr 0.1", message=f"{steps} steps timed",
               stats={"num_accepted_steps": int(t1 / 0.1)}, ys=None)
    if accuracy is None:
        return out
    runs = {lr: gd(lr, int(round(t1 / lr)), 61) for lr in (0.1, 0.05)}
    times = np.unique(np.concatenate([r.times for r in runs.values()]))
    ref = gflow.simulate(p0, spec, (0.0, float(times[-1])), config=config, loss="meanfield", save_times=times[1:],
                         rtol=1e-8, atol=1e-11, progress=False)
    ref_at = dict(zip(np.round(ref.times, 9), ref.flat_params(), strict=True))
    errors, curve = {}, []
    for lr, r in runs.items():
        want = np.stack([ref_at[t] for t in np.round(r.times, 9)])
        over_time = np.linalg.norm(r.flat_params() - want, axis=1) / np.linalg.norm(want, axis=1)
        errors[lr] = float(over_time[1:].max())
        if lr == 0.1:
            curve = [(float(t), float(e), float(a), float(b)) for t, e, a, b in
                     zip(r.times, over_time, r.loss, ref.loss[np.searchsorted(ref.times, r.times)], strict=True)]
    fitted = np.log(errors[0.1] / errors[0.05]) / np.log(2.0)
    order = max(fitted, 1.0)
    lr_eq = 0.05 * (accuracy / errors[0.05]) ** (1.0 / order)
    out.update(gd_errors=errors, gd_curve=curve, gd_order=fitted, gd_lr_equal=lr_eq,
               gd_wall_equal=per_step * t1 / lr_eq,
               message=f"error {errors[0.1]:.1e} at lr 0.1, {errors[0.05]:.1e} at lr 0.05 (~ lr^{fitted:.2f}); "
                       f"at the default's error {accuracy:.1e}: lr {lr_eq:.1e}, {per_step * t1 / lr_eq:.2e} s")
    return out


def run_one(args) -> dict:
    """One contender in this process: warm-up on a short prefix, then the timed run."""
    import resource

    import jax

    import gflow

    spec, config, p0 = setting(**json.loads(args.setting))
    n = gflow.ParamLayout.of(config, spec).size
    grid = gflow.default_save_times((0.0, args.t1), 61)
    out = {"contender": args.contender, "params": n}
    name, _, rtol_text = args.contender.partition("@")
    rtol = float(rtol_text) if rtol_text else 1e-6
    if name.startswith("cvode-"):
        import cvode

        layout = gflow.ParamLayout.of(config, spec)
        field = gflow.GradientField(gflow.loss_function(spec, config, "meanfield"), layout)
        ys, wall, counts, message = cvode.solve(name.removeprefix("cvode-"), cvode.functions(field),
                                                np.asarray(layout.flatten(p0)), grid, rtol, rtol * 1e-3)
        out.update(wall=wall, ok=ys is not None, message=message, nfev=counts["nfev"], njev=counts["njev"],
                   products=counts["products"],
                   solver=f"CVODE {name.removeprefix('cvode-')} rtol {rtol:g}",
                   ys=None if ys is None else ys.tolist())
    elif args.contender == "gd":
        out.update(gd_contender(p0, spec, config, args.t1, args.gd_accuracy))
    elif args.contender == "lsoda":
        from scipy.integrate import solve_ivp

        layout = gflow.ParamLayout.of(config, spec)
        field = gflow.GradientField(gflow.loss_function(spec, config, "meanfield"), layout)
        f = jax.jit(lambda y: field(0.0, y, None))
        jac = jax.jit(jax.jacfwd(lambda y: field(0.0, y, None)))
        y0 = np.asarray(layout.flatten(p0))
        jac(y0), f(y0)
        tic = time.perf_counter()
        sol = solve_ivp(lambda t, y: np.asarray(f(y)), (0, args.t1), y0, method="LSODA", t_eval=grid, rtol=1e-6,
                        atol=1e-9, jac=lambda t, y: np.asarray(jac(y)))
        out.update(wall=time.perf_counter() - tic, ok=bool(sol.success), message=sol.message, nfev=int(sol.nfev),
                   njev=int(sol.njev), ys=sol.y.T.tolist() if sol.success else None)
    else:
        solver = {"default": None, "dense": "GradientFlowBDF", "krylov": "GradientFlowKrylovBDF", "tsit5": "Tsit5",
                  "reference": "GradientFlowBDF" if n <= 2048 else "GradientFlowKrylovBDF"}[name]
        rtol = 1e-8 if name == "reference" else rtol
        # A fixed chunk size: the warm-up on the first chunk compiles exactly the program the run uses.
        kw = dict(config=config, loss="meanfield", solver=solver, rtol=rtol, atol=rtol * 1e-3, progress=False,
                  max_steps=args.max_steps, chunk_size=CHUNK)
        tic = time.perf_counter()
        first = gflow.simulate(p0, spec, (0.0, float(grid[CHUNK])), save_times=grid[1:CHUNK + 1], **kw)  # compiles
        if solver is None:  # the switching default's first chunks are explicit: compile its BDF too,
            gflow.simulate(p0, spec, (0.0, float(grid[CHUNK])), save_times=grid[1:CHUNK + 1],
                           **(kw | {"solver": gflow.solvers.stiff_solver(n)}))
            # and its stiffness test's curvature program, which a first chunk too short to be tested
            # never calls (it compiled inside the timed run: 0.6 s of problem E's 2.1 s)
            plan = gflow.flow.RunPlan.of(first.record)
            plan.strategy.curvatures(plan, first.flat_params()[-1:])
        out["compile"] = time.perf_counter() - tic  # tracing and compiling, plus the first chunk's solve
        tic = time.perf_counter()
        tr = gflow.simulate(p0, spec, (0.0, args.t1), save_times=grid[1:], **kw)
        out.update(wall=time.perf_counter() - tic, ok=tr.ok, message=tr.message, solver=tr.record.solver.name,
                   stats={k: int(v) for k, v in tr.stats.items() if k.startswith("num")},
                   methods=tr.stats.get("method_steps"),
                   ys=tr.flat_params().tolist() if tr.ok else None, loss=float(tr.loss[-1]))
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def contender(name: str, problem: dict, t1: float, budget: float, max_steps: int,
              gd_accuracy: float | None = None) -> dict:
    label = name
    # `:all`: the contender's process keeps JAX's and OpenBLAS's own thread counts (gflow holds them to
    # one, src/gflow/common/_threads.py), so that each contender can be timed at its best
    name, all_threads = (name[: -len(ALL_THREADS)], True) if name.endswith(ALL_THREADS) else (name, False)
    env = dict(os.environ, GFLOW_CPU_THREADS="all") if all_threads else None
    cmd = [sys.executable, __file__, "--one", name, "--setting", json.dumps(problem), "--t1", str(t1),
           "--max-steps", str(max_steps)] + ([] if gd_accuracy is None else ["--gd-accuracy", str(gd_accuracy)])
    tic = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=budget, env=env)
    except subprocess.TimeoutExpired:
        return {"contender": label, "ok": False, "message": f"over the {budget:.0f} s budget", "wall": budget}
    if done.returncode != 0:
        return {"contender": label, "ok": False, "message": done.stderr.strip().splitlines()[-1][:200],
                "wall": time.perf_counter() - tic}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]), contender=label)


def gd_equal_steps(r: dict) -> str:
    return f"{r['stats']['num_accepted_steps'] * 0.1 / r['gd_lr_equal']:.1e}"


def relative_error(ys: np.ndarray, ref: np.ndarray) -> float:
    """The largest relative parameter error over the saved states."""
    return float((np.linalg.norm(ys - ref, axis=1) / np.linalg.norm(ref, axis=1)).max())


def events_of(record, ys) -> dict:
    """Stage events of saved states `ys` on `record`'s grid, timed by interpolation between saved
    points (`refine=False`: the same rule for every contender, and no re-solve of a large flow)."""
    import gflow
    from gflow.analysis import detect_stages

    traj = gflow.Trajectory.from_flat(record, record.save_times, np.asarray(ys))
    return {(e.kind, i): e.time for i, e in enumerate(detect_stages(traj, refine=False)) if e.kind != "plateau"}


def grid_record(problem: dict, t1: float):
    """The record of the problem's flows on the 61-point grid, for trajectories built from saved states."""
    import gflow

    spec, config, p0 = setting(**problem)
    grid = gflow.default_save_times((0.0, t1), 61)
    return gflow.simulate(p0, spec, (0.0, float(grid[1])), config=config, loss="meanfield", save_times=grid[1:2],
                          progress=False).record.with_save_times(grid)


def event_shift(events: dict, reference: dict) -> tuple[float, int]:
    """The largest |log(t / t_ref)| over the reference's events, and how many of them are missed."""
    common = [k for k in reference if k in events and reference[k] > 0]
    shift = max((abs(np.log(events[k] / reference[k])) for k in common), default=float("nan"))
    return shift, len(reference) - len(common)


def table(rows: list[dict], reference: dict | None, problem: dict, t1: float):
    ref = np.asarray(reference["ys"]) if reference and reference.get("ys") else None
    record = grid_record(problem, t1) if ref is not None else None
    ref_events = events_of(record, ref) if ref is not None else None
    if ref_events is not None:
        print(f"reference events: {sorted((k[0], round(v, 3)) for k, v in ref_events.items())}")
    base = next((r["wall"] for r in rows if r["contender"] == "default" and r.get("ok")), None)
    print("\n| contender | solver | wall after compile (s) | first chunk with compilation (s) | steps (rejected) | "
          "Hessians / Lanczos | HVPs | peak memory (GiB) | max rel. param error | max event shift (log) | "
          "missed events | x default | status |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    curves = []
    for r in rows:
        s = r.get("stats", {})
        # CVODE and LSODA report right-hand-side evaluations, not steps
        steps = (f"{s['num_accepted_steps']} ({s.get('num_rejected_steps', '-')})" if "num_accepted_steps" in s
                 else f"- ({r['nfev']} gradients)" if "nfev" in r else "-")
        err, shift, missed = "-", "-", "-"
        if ref is not None and r.get("ys") is not None:
            ys = np.asarray(r["ys"])
            err = f"{relative_error(ys, ref):.1e}"
            shift, missed = event_shift(events_of(record, ys), ref_events)
            shift = f"{shift:.1e}"
        ratio = f"{r['wall'] / base:.2f}" if base and r.get("ok") else "-"
        status = ("success" if r.get("ok") else "") if r["contender"] != "gd" else r.get("message", "")
        compile_s = f"{r['compile']:.1f}" if "compile" in r else "-"
        products = s.get("num_hessian_vector_products", r.get("products", "-"))  # CVODE's: counted by cvode.py
        print(f"| {r['contender']} | {r.get('solver', '-')} | {r['wall']:.1f} | {compile_s} | {steps} | "
              f"{s.get('num_hessian_evaluations', r.get('njev', '-'))} | {products} | "
              f"{r.get('peak_rss_gib', float('nan')):.2f} | {err} | {shift} | {missed} | {ratio} | {status} |")
        if r.get("gd_curve"):
            curves.append(r["gd_curve"])
        if "gd_wall_equal" in r and base:
            print(f"| GD at the default's error (extrapolated) | GD lr {r['gd_lr_equal']:.1e} | "
                  f"{r['gd_wall_equal']:.3g} | - | {gd_equal_steps(r)} | - | - | - | (= default's) | - | - | "
                  f"{r['gd_wall_equal'] / base:.3g} | extrapolated |")
    for curve in curves:
        print_gd_curve(curve)
    if ref is not None:
        equal_accuracy(rows, ref)


def equal_accuracy(rows: list[dict], ref: np.ndarray) -> None:
    """Each family's fastest run whose error is at most the default's, against the default's time."""
    default = next((r for r in rows if r["contender"].split("@")[0] == "default" and r.get("ys")), None)
    if default is None:
        return
    target = relative_error(np.asarray(default["ys"]), ref)
    print(f"\nat equal accuracy (error <= the default's {target:.2e}, {default['wall']:.2f} s):")
    best = {}
    for r in rows:
        family = r["contender"].split("@")[0]
        if r is default or not r.get("ys") or family == "default":
            continue
        err = relative_error(np.asarray(r["ys"]), ref)
        if err <= target and (family not in best or r["wall"] < best[family]["wall"]):
            best[family] = dict(r, err=err)
    for family, r in sorted(best.items(), key=lambda kv: kv[1]["wall"]):
        print(f"  {r['contender']}: {r['wall']:.2f} s at error {r['err']:.1e}: {r['wall'] / default['wall']:.2f}x "
              "the default's time")


def print_gd_curve(curve: list) -> None:
    """GD at lr 0.1 against the flow at its saved times: where it follows and where it leaves."""
    print("\nGD at lr 0.1 against the rtol-1e-8 flow:")
    print("| t | rel. param error | GD loss | flow loss |\n|---:|---:|---:|---:|")
    for t, err, gd_loss, flow_loss in curve:
        print(f"| {t:.3g} | {err:.2e} | {gd_loss:.6f} | {flow_loss:.6f} |")


def scaling(t1: float, budget: float):
    """Wall of the matrix-free solver (after compilation) against the parameter count."""
    sizes = [dict(V=16, d=d, heads=1, value=False) for d in (8, 16, 32, 64)]
    counts, walls = [], []
    for p in sizes:
        r = contender("krylov", p, t1, budget, 100_000)
        print(p, {k: r.get(k) for k in ("params", "wall", "solver", "ok", "stats", "peak_rss_gib")}, flush=True)
        if r.get("ok"):
            counts.append(r["params"])
            walls.append(r["wall"])
    if len(counts) >= 2:
        slope = np.polyfit(np.log(counts), np.log(walls), 1)[0]
        print(f"wall ~ n^{slope:.2f} over n = {counts} (t to {t1:g})")


def crossover(t1: float, budget: float):
    """Dense against matrix-free BDF on growing models: where the default should switch."""
    sizes = [dict(V=4, d=8, heads=1, value=False), dict(V=4, d=12, heads=1, value=False),
             dict(V=4, d=16, heads=1, value=False), dict(V=8, d=16, heads=1, value=False)]
    print("| V | d | parameters | dense BDF (s) | Krylov BDF (s) | Krylov / dense | Krylov HVPs | dense Hessians |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p in sizes:
        dense, krylov = (contender(name, p, t1, budget, 100_000) for name in ("dense", "krylov"))
        ratio = krylov["wall"] / dense["wall"] if dense.get("ok") and krylov.get("ok") else float("nan")
        print(f"| {p['V']} | {p['d']} | {krylov.get('params', '-')} | {dense['wall']:.2f} | {krylov['wall']:.2f} | "
              f"{ratio:.2f} | {krylov.get('stats', {}).get('num_hessian_vector_products', '-')} | "
              f"{dense.get('stats', {}).get('num_hessian_evaluations', '-')} |", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--problem", choices=tuple(PROBLEMS), default="C")
    ap.add_argument("--contenders", default="default,dense,tsit5,lsoda")
    ap.add_argument("--budget", type=float, default=900.0, help="seconds per contender")
    ap.add_argument("--t1", type=float, default=1e5)
    ap.add_argument("--max-steps", type=int, default=100_000)
    ap.add_argument("--no-reference", action="store_true", help="skip the rtol 1e-8 reference (no errors)")
    ap.add_argument("--scaling", action="store_true")
    ap.add_argument("--crossover", action="store_true", help="dense against Krylov BDF on growing models")
    ap.add_argument("--gd-accuracy", type=float, default=None,
                    help="run GD in full and extrapolate to this error (the default's, from an earlier run)")
    ap.add_argument("--gd-full", action="store_true",
                    help="run GD in full at lr 0.1 and 0.05 and extrapolate to the default's error (needs default "
                         "and the reference first)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--setting", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        args.contender = args.one
        print(json.dumps(run_one(args)))
        return
    if args.scaling:
        scaling(args.t1, args.budget)
        return
    if args.crossover:
        crossover(args.t1, args.budget)
        return
    problem = PROBLEMS[args.problem]
    print(f"problem {args.problem}: {problem}, t to {args.t1:g}, {os.cpu_count()} cores", flush=True)
    reference = None
    if not args.no_reference:
        reference = contender("reference", problem, args.t1, 2 * args.budget, args.max_steps)
        print("reference (default solver, rtol 1e-8):", {k: reference.get(k) for k in ("wall", "ok", "stats")},
              flush=True)
    rows = []
    for name in args.contenders.split(","):
        accuracy = args.gd_accuracy if name == "gd" else None
        if name == "gd" and args.gd_full and reference and reference.get("ys"):
            default = next((r for r in rows if r["contender"] == "default" and r.get("ys")), None)
            accuracy = relative_error(np.asarray(default["ys"]), np.asarray(reference["ys"])) if default else None
        rows.append(contender(name, problem, args.t1, args.budget, args.max_steps, accuracy))
        print({k: rows[-1].get(k) for k in ("contender", "wall", "ok", "message", "stats", "peak_rss_gib")},
              flush=True)
    table(rows, reference, problem, args.t1)


if __name__ == "__main__":
    main()
