"""Throughput of `simulate_many` (one vmapped solve) against a loop of `simulate` calls.

    .venv/bin/python benchmarks/ensemble.py [--members 8] [--loop-members 8]

Both are timed warm (a first call compiles each); the demo setting to t = 1e4.
"""

import argparse
import time

import jax

import gflow


def main(members: int, loop_members: int):
    spec = gflow.MarkovSpec.sticky([0.75, 0.19, 0.05, 0.01], 0.5, T=10)
    config = gflow.TransformerConfig(d_model=8)
    ps = [gflow.init_params(jax.random.key(s), config, spec, scale=1e-3) for s in range(members)]
    kw = dict(config=config, loss="meanfield", n_save=61, progress=False)
    gflow.simulate(ps[0], spec, (0, 1e4), **kw)
    tic = time.perf_counter()
    for p in ps[:loop_members]:
        gflow.simulate(p, spec, (0, 1e4), **kw)
    loop = (time.perf_counter() - tic) / min(loop_members, members) * members  # per member, scaled
    batch = gflow.stack_params(ps)
    tic = time.perf_counter()
    gflow.simulate_many(batch, spec, (0, 1e4), **kw)
    first = time.perf_counter() - tic
    tic = time.perf_counter()
    gflow.simulate_many(batch, spec, (0, 1e4), **kw)
    many = time.perf_counter() - tic
    print(f"{members} members on {len(jax.devices())} {jax.devices()[0].platform} device(s): loop of simulate "
          f"{loop:.2f} s (measured on {min(loop_members, members)}), simulate_many "
          f"{many:.2f} s (first call {first:.1f} s with compilation); throughput ratio {loop / many:.2f}x")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--loop-members", type=int, default=8, help="members timed in the loop (scaled to all)")
    args = ap.parse_args()
    main(args.members, args.loop_members)
