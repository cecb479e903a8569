"""Focus and dilution on English text (docs/text.md): a word-level chain estimated from a corpus, the
exact flow on it, the flow on windows cut from the text itself, a sticky chain with the same unigram
law, and GD/Adam on the text windows; stage tables side by side and one timelines figure.

    .venv/bin/python examples/text_chain.py                      # the offline default corpus
    .venv/bin/python examples/text_chain.py --corpus wiki.train.raw --out gflow-text-wiki

Everything runs offline: without `--corpus` the text is CPython's own help topics
(`gflow.data.default_corpus()`); WikiText or TinyStories files you have can be read with
`gflow.data.load_wikitext` / `load_tinystories` and passed as text.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import gflow
from gflow.analysis import compare, compute_metrics, detect_stages, event_shift_table, stage_table
from gflow.plot import attention_figure, overview_figure, save_figure, timelines_figure


def sticky_twin(chain: gflow.MarkovSpec, unigram: np.ndarray) -> gflow.MarkovSpec:
    """The sticky chain $\lambda I + (1 - \lambda) \mathbf 1 u^\top$ with the text's unigram law $u$
    and the text chain's entropy rate: the same two loss levels (unigram entropy, entropy rate), so the
    same information in the context, but spread as "repeat the last token" instead of as the text's
    bigrams. Its entropy rate falls from $H(u)$ at $\lambda = 0$ towards 0 as $\lambda \to 1$, so
    $\lambda$ is found by bisection."""
    target = chain.entropy_rate()
    low, high = 0.0, 1.0 - 1e-12
    for _ in range(60):
        lam = 0.5 * (low + high)
        rate = gflow.MarkovSpec.sticky(unigram, lam, T=chain.T).entropy_rate()
        low, high = (lam, high) if rate > target else (low, lam)
    print(f"sticky twin: lam = {lam:.4f} gives the entropy rate {target:.4f} nats")
    return gflow.MarkovSpec.sticky(unigram, lam, T=chain.T, positions=chain.positions, labels=chain.labels)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", help="a UTF-8 text file (default: the offline default corpus)")
    parser.add_argument("--vocab-size", type=int, default=16)
    parser.add_argument("--T", type=int, default=16, help="context length of the text windows")
    parser.add_argument("--windows", type=int, default=256, help="how many text windows the flow trains on")
    parser.add_argument("--t-end", type=float, default=1e5)
    parser.add_argument("--out", default="gflow-text-example")
    args = parser.parse_args(argv)
    tic = time.perf_counter()
    corpus = gflow.data.default_corpus() if args.corpus is None else args.corpus
    tokens = gflow.data.tokenize(corpus, args.vocab_size, level="word")
    chain = gflow.MarkovSpec.from_text(corpus, vocab_size=args.vocab_size, T=args.T, positions="all")
    print(f"{len(tokens.tokens):,} words, {tokens.types:,} types; kept {chain.labels[:-1]}; "
          f"OTHER holds {tokens.unigram()[-1]:.1%} of the words")
    print(f"entropy rate {chain.entropy_rate():.4f} nats, unigram entropy {chain.unigram_entropy():.4f}")
    windows = tokens.windows(args.T, n=args.windows, key=0)
    config = gflow.TransformerConfig(d_model=8)
    params0 = gflow.init_params(0, config, chain, scale=1e-3)

    # The windows flow takes the dense Hessian of a loss over windows x positions, so re-solving it to
    # time each event by root finding (refine) would double its cost: its events are read off the save
    # grid instead (their uncertainty is then half a save interval, and the tables say so).
    os.makedirs(args.out, exist_ok=True)
    runs = {}
    flows = {
        "(a) text chain, mean field": (chain, {"loss": "meanfield"}, True),
        f"(b) {args.windows} text windows, T = {args.T}": (chain, {"loss": "dataset", "dataset": windows}, False),
        "(c) sticky chain, same unigram law": (sticky_twin(chain, chain.stationary()), {"loss": "meanfield"}, True),
    }
    for label, (spec, loss, refine) in flows.items():
        t0 = time.perf_counter()
        traj = gflow.simulate(params0, spec, (0.0, args.t_end), config=config, **loss)
        metrics = compute_metrics(traj)
        events = detect_stages(traj, metrics=metrics, refine=refine)
        runs[label] = (traj, metrics, events)
        traj.save(os.path.join(args.out, f"trajectory-{label[1]}.npz"))
        print(f"\n## {label}: {traj.status.value}, final loss {traj.loss[-1]:.4f} ({time.perf_counter() - t0:.0f} s)\n")
        print(stage_table(events))

    # The same model trained on the text windows by full-batch GD and by Adam (the windows flow's loss),
    # through the first escapes and the focus onset (t = 4,000: GD at lr 0.5 needs 8,000 steps).
    text_flow, _, text_events = runs[f"(b) {args.windows} text windows, T = {args.T}"]
    horizon = min(args.t_end, 4e3)
    discrete = {"GD, lr 0.5": ("gd", 0.5, int(horizon / 0.5)), "Adam, lr 0.01": ("adam", 0.01, 4000)}
    timelines = [(label, m, e) for label, (_, m, e) in runs.items()]
    for label, (optimizer, lr, steps) in discrete.items():
        t0 = time.perf_counter()
        traj = gflow.train(params0, chain, config, optimizer=optimizer, lr=lr, steps=steps,
                           loss=text_flow.record.loss)
        c = compare(text_flow, traj, flow_events=text_events)
        print(f"\n## {label} on the text windows ({time.perf_counter() - t0:.0f} s)\n\n{c.summary()}\n")
        print(event_shift_table(c.event_shifts))
        if optimizer == "gd":  # Adam's time (lr x step) is not flow time: its table is printed, not drawn
            timelines.append((f"{label} on (b)", compute_metrics(traj), c.discrete_events))

    # GD stops at t = 4,000: its drop is measured down to the windows flow's lowest loss.
    lowest = [None] * len(runs) + [float(np.min(text_flow.loss))] * (len(timelines) - len(runs))
    written = save_figure(timelines_figure(timelines, title=f"stages on English text (V = {args.vocab_size})",
                                           lowest=lowest), os.path.join(args.out, "timelines"))
    label, (traj, metrics, events) = next(iter(runs.items()))
    written += save_figure(overview_figure(metrics, events, reference_levels=chain.reference_levels(),
                                           title=f"{label}: stages of learning"), os.path.join(args.out, "overview"))
    written += save_figure(attention_figure(metrics, events), os.path.join(args.out, "attention"))
    print(f"\nwrote {', '.join(written)} ({time.perf_counter() - tic:.0f} s in all)")


if __name__ == "__main__":
    main()
