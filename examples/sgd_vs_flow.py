"""GD at three learning rates, online SGD at two batch sizes, and Adam against the gradient flow of the
demo setting, up to t = 3000: one figure with the loss curves, stage timelines, distances and sharpness,
and a table of event-time shifts per run (in ./sgd-vs-flow/). Same as `gflow compare`."""

from gflow import ExperimentSettings
from gflow.app import DEFAULT_RUNS, run_comparison

# (optimizer, lr, batch size): full-batch GD, online SGD with fresh minibatches, Adam.
print("runs:", DEFAULT_RUNS)
run_comparison(ExperimentSettings.demo(), "sgd-vs-flow", t_end=3000.0)
