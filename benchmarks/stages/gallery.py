"""Validation gallery for the stage detectors (issue 12): 16 settings far from the demo.

For each setting the flow is integrated and its overview figure drawn *without* detected events
(`--figures-only`); the events a person sees in those figures are written down in `expected.py`
before the detector runs. Then (default mode) the detector runs, its events are drawn on the
figures, and each is matched against the expectations: a hit is the same kind within a factor 2
in time (0.3 decades: how precisely a time can be read off a six-decade log axis); a detected event
that matches nothing is *false* (or *weak, unlisted* when the detector itself marks it weak); an
expected event that nothing matches is a *miss*.

    .venv/bin/python benchmarks/stages/gallery.py --figures-only   # undecorated figures
    .venv/bin/python benchmarks/stages/gallery.py                  # detect, draw, score
    .venv/bin/python benchmarks/stages/gallery.py --only zipf5 lam09

Figures go to benchmarks/stages/figures/ (not committed; regenerate them with the commands above).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

import gflow
from gflow.analysis import compute_metrics, detect_stages, stage_table
from gflow.plot import overview_figure, save_figure

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from expected import EXPECTED  # noqa: E402

DEMO_PI = (0.75, 0.19, 0.05, 0.01)
MATCH = math.log(2.0)
KINDS = ("condensation", "escape", "focus_onset", "focus_peak", "dilution")


def zipf(V: int, a: float = 1.2):
    p = np.arange(1, V + 1, dtype=float) ** -a
    return tuple(p / p.sum())


SETTINGS = {
    # name: (pi, lam, T, config keywords, init scale, seed, loss, t_end)
    "demo": (DEMO_PI, 0.5, 10, {"d_model": 8}, 1e-3, 0, "meanfield", 1e5),
    "zipf5": (zipf(5), 0.5, 10, {"d_model": 8}, 1e-3, 0, "meanfield", 1e5),
    "zipf8": (zipf(8), 0.5, 10, {"d_model": 8}, 1e-3, 0, "meanfield", 1e5),
    "near_uniform": ((0.27, 0.25, 0.24, 0.24), 0.5, 10, {"d_model": 8}, 1e-3, 0, "meanfield", 1e5),
    "two_equal_top": ((0.4, 0.4, 0.15, 0.05), 0.5, 10, {"d_model": 8}, 1e-3, 0, "meanfield", 1e5),
    "lam01": (DEMO_PI, 0.1, 10, {"d_model": 8}, 1e-3, 0, "meanfield", 1e5),
    "lam09": (DEMO_PI, 0.9, 10, {"d_model": 8}, 1e-3, 0, "meanfield", 1e5),
    "d4": (DEMO_PI, 0.5, 10, {"d_model": 4}, 1e-3, 0, "meanfield", 1e5),
    "d16": (DEMO_PI, 0.5, 10, {"d_model": 16}, 1e-3, 0, "meanfield", 1e5),
    "scale1e-2": (DEMO_PI, 0.5, 10, {"d_model": 8}, 1e-2, 0, "meanfield", 1e5),
    "scale1e-5": (DEMO_PI, 0.5, 10, {"d_model": 8}, 1e-5, 0, "meanfield", 1e5),
    "counts_T8": (DEMO_PI, 0.5, 8, {"d_model": 8}, 1e-3, 0, "counts", 1e5),
    "value_residual": (DEMO_PI, 0.5, 10, {"d_model": 8, "value": True, "residual": True}, 1e-3, 0, "meanfield", 1e5),
    "two_heads": (DEMO_PI, 0.5, 10, {"d_model": 8, "n_heads": 2}, 1e-3, 0, "meanfield", 1e5),
    "positions": (DEMO_PI, 0.5, 4, {"d_model": 8, "positional": "learned"}, 1e-3, 0, "enumerate", 1e5),
    "other_seed": ((0.6, 0.25, 0.1, 0.05), 0.3, 10, {"d_model": 6}, 3e-4, 3, "meanfield", 1e5),
}


def run(name: str):
    pi, lam, T, cfg, scale, seed, loss, t_end = SETTINGS[name]
    spec = gflow.MarkovSpec.sticky(pi, lam, T=T)
    config = gflow.TransformerConfig(**cfg)
    p0 = gflow.init_params(seed, config, spec, scale=scale)
    return gflow.simulate(p0, spec, (0.0, t_end), config=config, loss=loss, progress=False)


def score(name: str, events) -> dict:
    expected = [(k, t) for k, t in EXPECTED.get(name, []) if k in KINDS]
    found = [e for e in events if e.kind in KINDS]
    used, hits = set(), 0
    for kind, t in expected:
        best = min((j for j, e in enumerate(found) if e.kind == kind and j not in used),
                   key=lambda j: abs(math.log(found[j].time / t)), default=None)
        if best is not None and abs(math.log(found[best].time / t)) < MATCH:
            used.add(best)
            hits += 1
    extra = [found[j] for j in range(len(found)) if j not in used]
    return {"expected": len(expected), "hits": hits, "misses": len(expected) - hits,
            "false": sum(not e.weak for e in extra), "weak_unlisted": sum(e.weak for e in extra),
            "extra": [(e.kind, round(e.time, 3), e.weak) for e in extra]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--figures-only", action="store_true")
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    out = os.path.join(HERE, "figures")
    os.makedirs(out, exist_ok=True)
    rows = ["| setting | expected | hits | misses | false | weak, unlisted | events not expected |",
            "|---|---:|---:|---:|---:|---:|---|"]
    for name in args.only or SETTINGS:
        tic = time.perf_counter()
        traj = run(name)
        m = compute_metrics(traj)
        levels = traj.spec.reference_levels()
        if args.figures_only:
            save_figure(overview_figure(m, [], reference_levels=levels, title=name), os.path.join(out, name + "_bare"))
            print(f"{name}: {traj.status}, loss {traj.loss[-1]:.5f} ({time.perf_counter() - tic:.1f} s)", flush=True)
            continue
        events = detect_stages(traj)
        save_figure(overview_figure(m, events, reference_levels=levels, title=name), os.path.join(out, name))
        s = score(name, events)
        print(f"\n## {name} ({time.perf_counter() - tic:.1f} s)\n\n{stage_table(events)}\n", flush=True)
        rows.append(f"| {name} | {s['expected']} | {s['hits']} | {s['misses']} | {s['false']} | {s['weak_unlisted']} "
                    f"| {', '.join(f'{k} {t:g}' + (' (weak)' if w else '') for k, t, w in s['extra']) or '—'} |")
    if not args.figures_only:
        print("\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
