"""The application layer: experiment settings (TOML), the two report runners, and the `gflow` command.

- `ExperimentSettings`: the demo's settings, or a TOML file's, checked when read.
- `run_experiment`: simulate, mark the stages, linearise at plateaus, draw, write a report.
- `run_comparison`: GD, SGD and Adam against the flow; figure and event-shift tables.
- `sweep`: a grid of settings, one independent run per point, on a local pool or a cluster; a
  summary table and a phase diagram.
- `main`: the `gflow` command line.
"""

from ._cli import console_main as console_main
from ._cli import main as main
from ._comparison import DEFAULT_RUNS as DEFAULT_RUNS
from ._comparison import run_comparison as run_comparison
from ._experiment import ExperimentResult as ExperimentResult
from ._experiment import run_experiment as run_experiment
from ._settings import CHAIN_KINDS as CHAIN_KINDS
from ._settings import DEMO as DEMO
from ._settings import ExperimentSettings as ExperimentSettings
from ._sweep import SweepResult as SweepResult
from ._sweep import plan_sweep as plan_sweep
from ._sweep import read_summary as read_summary
from ._sweep import sweep as sweep
