"""Throughput of `simulate_many` against a loop of `simulate` calls, for each way of batching.

    .venv/bin/python benchmarks/ensemble.py [--members 8] [--t1 1e4] [--vmap]

The demo setting (V = 4, d_model = 8, meanfield loss, init scale 1e-3) to `--t1`. Every contender is
timed warm (its first call, which compiles, is timed separately); ratios are throughputs against the
loop measured in the same run. `--vmap` adds the vmapped, sharded solve (slow on CPUs).
"""

import argparse
import os
import time

import jax

import gflow


def timed(fn):
    tic = time.perf_counter()
    out = fn()
    return time.perf_counter() - tic, out


def main(members: int, t1: float, vmap: bool):
    spec = gflow.MarkovSpec.sticky([0.75, 0.19, 0.05, 0.01], 0.5, T=10)
    config = gflow.TransformerConfig(d_model=8)
    ps = [gflow.init_params(jax.random.key(s), config, spec, scale=1e-3) for s in range(members)]
    kw = dict(config=config, loss="meanfield", n_save=61, progress=False)
    first_single, _ = timed(lambda: gflow.simulate(ps[0], spec, (0, t1), **kw))
    loop, _ = timed(lambda: [gflow.simulate(p, spec, (0, t1), **kw) for p in ps])
    batch = gflow.stack_params(ps)
    rows = [("loop of simulate", first_single, loop)]
    for name, extra in [("simulate_many, loop (default on CPUs)", {"batching": "loop"}),
                        ("simulate_many, processes (one per core)", {"batching": "processes"}),
                        ("simulate_many, threads", {"batching": "threads"})] + (
            [("simulate_many, vmap", {"batching": "vmap"})] if vmap else []):
        first, _ = timed(lambda extra=extra: gflow.simulate_many(batch, spec, (0, t1), **kw, **extra))
        warm, trajs = timed(lambda extra=extra: gflow.simulate_many(batch, spec, (0, t1), **kw, **extra))
        assert all(t.ok for t in trajs)
        rows.append((name, first, warm))
    print(f"{members} members of the demo flow to t = {t1:g}, {os.cpu_count()} CPU cores, {len(jax.devices())} "
          f"{jax.devices()[0].platform} device(s)\n")
    print("| contender | first call (s) | warm (s) | throughput vs loop |\n|---|---:|---:|---:|")
    for name, first, warm in rows:
        print(f"| {name} | {first:.2f} | {warm:.2f} | {loop / warm:.2f}x |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--t1", type=float, default=1e4)
    ap.add_argument("--vmap", action="store_true", help="also time the vmapped solve")
    args = ap.parse_args()
    main(args.members, args.t1, args.vmap)
