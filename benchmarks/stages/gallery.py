"""Validation gallery for the stage detectors (issues 12 and 24): 24 settings far from the demo.

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
    .venv/bin/python benchmarks/stages/gallery.py --cache --predictions   # + a-priori escape predictions

Figures go to benchmarks/stages/figures/ (not committed; regenerate them with the commands above).
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import sys
import time

import numpy as np

import gflow
from gflow.analysis import compute_metrics, detect_stages, plateau_linearization, stage_table
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


def shifted_chain(V: int, stay: float):
    """A permutation-like chain: each token moves to the next with probability `stay`, else to a token
    drawn from a Zipf law (so that the stationary law is not uniform)."""
    return stay * np.roll(np.eye(V), 1, axis=1) + (1 - stay) * np.asarray(zipf(V))[None, :]



# Issue 24's settings, far from the sticky ones above: chains that are not sticky, near-uniform and
# long-tailed laws, the extremes of lambda, two heads with a value path, text.
# name: (spec builder, config keywords, init scale, seed, loss, t_end)
OTHER_CHAINS = {
    "dirichlet6": (lambda: gflow.MarkovSpec.dirichlet(7, 6, 0.5, T=10), {"d_model": 8}, 1e-3, 0, "meanfield", 1e5),
    "shift5": (lambda: gflow.MarkovSpec.from_matrix(shifted_chain(5, 0.6), T=10), {"d_model": 6}, 1e-3, 1,
               "meanfield", 1e5),
    "near_uniform6": (lambda: gflow.MarkovSpec.sticky((0.19, 0.18, 0.17, 0.16, 0.15, 0.15), 0.6, T=12),
                      {"d_model": 8}, 1e-3, 2, "meanfield", 1e5),
    "long_tail12": (lambda: gflow.MarkovSpec.sticky(zipf(12, 1.5), 0.7, T=10), {"d_model": 8}, 1e-3, 0,
                    "meanfield", 1e5),
    "lam005": (lambda: gflow.MarkovSpec.sticky(zipf(5, 1.0), 0.05, T=10), {"d_model": 8}, 1e-3, 0, "meanfield",
               1e5),
    "lam097": (lambda: gflow.MarkovSpec.sticky((0.5, 0.3, 0.15, 0.05), 0.97, T=10), {"d_model": 8}, 1e-3, 0,
               "meanfield", 1e5),
    "two_heads_value": (lambda: gflow.MarkovSpec.sticky(zipf(6, 1.0), 0.6, T=8),
                        {"d_model": 8, "n_heads": 2, "value": True, "residual": True}, 1e-3, 4, "meanfield", 1e5),
    "text12": (lambda: gflow.MarkovSpec.from_text(None, vocab_size=12, T=16, level="char"), {"d_model": 8}, 1e-3, 0,
               "meanfield", 1e5),
}


def build(name: str):
    """The chain, configuration and initial parameters of one setting."""
    if name in OTHER_CHAINS:
        make_spec, cfg, scale, seed, loss, t_end = OTHER_CHAINS[name]
        spec = make_spec()
    else:
        pi, lam, T, cfg, scale, seed, loss, t_end = SETTINGS[name]
        spec = gflow.MarkovSpec.sticky(pi, lam, T=T)
    return spec, gflow.TransformerConfig(**cfg), scale, seed, loss, t_end


def run(name: str, cache: str | None = None):
    """The setting's flow (kept in `cache`/<name>.pkl when given, so that re-scoring does not re-solve)."""
    path = None if cache is None else os.path.join(cache, name + ".pkl")
    if path is not None and os.path.exists(path):
        with open(path, "rb") as fh:
            return pickle.load(fh)
    spec, config, scale, seed, loss, t_end = build(name)
    p0 = gflow.init_params(seed, config, spec, scale=scale)
    traj = gflow.simulate(p0, spec, (0.0, t_end), config=config, loss=loss, progress=False)
    if path is not None:
        os.makedirs(cache, exist_ok=True)
        with open(path, "wb") as fh:
            pickle.dump(traj, fh)
    return traj


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
    parser.add_argument("--cache", action="store_true", help="keep the flows in figures/cache/ and reuse them")
    parser.add_argument("--predictions", action="store_true",
                        help="also predict every plateau's escape a priori (plateau_linearization)")
    args = parser.parse_args()
    out = os.path.join(HERE, "figures")
    os.makedirs(out, exist_ok=True)
    rows = ["| setting | expected | hits | misses | false | weak, unlisted | events not expected |",
            "|---|---:|---:|---:|---:|---:|---|"]
    predictions = ["| setting | plateau | entry | predicted from | saddle index | predicted escape | observed escape | "
                   "predicted/observed duration | linear only | why no prediction |",
                   "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name in args.only or [*SETTINGS, *OTHER_CHAINS]:
        tic = time.perf_counter()
        traj = run(name, os.path.join(out, "cache") if args.cache else None)
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
        if args.predictions:
            for r in plateau_linearization(traj, events):
                if not r.final:
                    predictions.append(f"| {name} | {r.plateau} | {r.entry:.4g} | {r.at:.4g} | {r.saddle_index} | "
                                       f"{r.predicted_escape:.4g} | {r.observed_escape:.4g} | {r.ratio:.3f} | "
                                       f"{r.linear_ratio:.3f} | {r.prediction.failure or ''} |")
        rows.append(f"| {name} | {s['expected']} | {s['hits']} | {s['misses']} | {s['false']} | {s['weak_unlisted']} "
                    f"| {', '.join(f'{k} {t:g}' + (' (weak)' if w else '') for k, t, w in s['extra']) or '—'} |")
    if not args.figures_only:
        print("\n" + "\n".join(rows))
    if args.predictions:
        print("\n" + "\n".join(predictions))


if __name__ == "__main__":
    main()
