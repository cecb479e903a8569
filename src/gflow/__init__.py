"""gflow: exact gradient flow of a one-layer Transformer on Markov data.

Importing gflow turns on JAX's float64 mode (`jax_enable_x64`): gradient flows are integrated in
double precision, and the exactness checks (enumerate == counts to 1e-10) need it. It also turns on
JAX's persistent compilation cache (`_warm.py`; `GFLOW_COMPILATION_CACHE=off` turns it off).

The layers (docs/architecture.md): `gflow.data` (data sources) -> the model -> `gflow.losses` ->
`gflow.solvers` and the flow (`simulate`, `simulate_many`, `resume`, `train`) -> `Trajectory` ->
`gflow.analysis` -> `gflow.plot` -> `gflow.app` (settings, reports, the `gflow` command).
"""

from . import _warm

_warm.prepare_environment()  # before equinox is imported (see _warm.py)

import jax as _jax  # noqa: E402

_jax.config.update("jax_enable_x64", True)
_warm.enable_compilation_cache()

from importlib.metadata import PackageNotFoundError as _PNF
from importlib.metadata import version as _version

from . import analysis as analysis
from . import app as app
from . import data as data
from . import losses as losses
from . import plot as plot
from . import solvers as solvers
from ._ensemble import simulate_many as simulate_many
from ._ensemble import stack_params as stack_params
from ._flow import resume as resume
from ._flow import simulate as simulate
from ._integrate import GradientField as GradientField
from ._integrate import default_save_times as default_save_times
from ._layout import ParamLayout as ParamLayout
from ._model import TransformerConfig as TransformerConfig
from ._model import TransformerParams as TransformerParams
from ._model import init_params as init_params
from ._record import RunRecord as RunRecord
from ._record import SolverSpec as SolverSpec
from ._record import TrainingSpec as TrainingSpec
from ._train import train as train
from ._trajectory import RunStatus as RunStatus
from ._trajectory import Trajectory as Trajectory
from ._trajectory import load as load
from .analysis import Comparison as Comparison
from .analysis import compare as compare
from .app import ExperimentSettings as ExperimentSettings
from .data import AbstractDataSource as AbstractDataSource
from .data import MarkovSpec as MarkovSpec
from .data import SparseLagSpec as SparseLagSpec
from .losses import LossFunction as LossFunction
from .losses import LossSpec as LossSpec
from .losses import loss_function as loss_function
from .losses import population_loss as population_loss

try:
    __version__ = _version("gflow")
except _PNF:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
