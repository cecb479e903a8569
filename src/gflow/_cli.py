"""The `gflow` command: `gflow demo`, `gflow run CONFIG.toml`."""

from __future__ import annotations

import argparse
import sys
import time

from ._settings import ExperimentSettings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gflow", description="Exact gradient flow of a one-layer Transformer on "
                                "Markov data: simulate, mark the stages of learning, draw and report.")
    sub = p.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the focus-dilution setting (sticky chain, d_model = 8, t to 1e5)")
    demo.add_argument("--out", default="gflow-demo", help="output folder (default: ./gflow-demo)")
    run = sub.add_parser("run", help="an experiment described by a TOML file (see docs/cli.md)")
    run.add_argument("config", help="path of the TOML file")
    run.add_argument("--out", default=None, help="output folder (default: [output].dir of the file)")
    cmp = sub.add_parser("compare", help="GD, SGD and Adam against the flow, on the settings of a TOML file")
    cmp.add_argument("config", nargs="?", default=None, help="TOML file (default: the demo settings)")
    cmp.add_argument("--out", default="gflow-compare", help="output folder (default: ./gflow-compare)")
    cmp.add_argument("--t-end", type=float, default=3000.0, help="flow time to compare over (default 3000)")
    for s in (demo, run, cmp):
        s.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo" or (args.command == "compare" and args.config is None):
            settings = ExperimentSettings.demo()
        else:
            settings = ExperimentSettings.from_toml(args.config)
    except ValueError as e:
        print(f"gflow: error: {e}", file=sys.stderr)
        return 2
    if args.command == "compare":
        from ._comparison_run import run_comparison

        run_comparison(settings, args.out, t_end=args.t_end, progress=False if args.no_progress else None)
        return 0
    from ._experiment import run_experiment  # imports JAX and matplotlib: only once the input is valid

    tic = time.perf_counter()
    result = run_experiment(settings, args.out, progress=False if args.no_progress else None)
    print(f"total {time.perf_counter() - tic:.1f} s (flow {result.timings['flow_s']:.1f} s incl. compilation, "
          f"analysis {result.timings['analysis_s']:.1f} s, figures {result.timings['figures_s']:.1f} s)")
    return 0 if result.trajectory.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
