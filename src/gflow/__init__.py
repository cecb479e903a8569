"""gflow: exact gradient flow of a one-layer Transformer on Markov data.

Importing gflow turns on JAX's float64 mode (`jax_enable_x64`): gradient flows are integrated in
double precision, and the exactness checks (enumerate == counts to 1e-10) need it. It also turns on
JAX's persistent compilation cache (`common/_warm.py`; `GFLOW_COMPILATION_CACHE=off` turns it off).

The layers are the folders (docs/architecture.md): `gflow.data` (data sources) -> `gflow.model`
-> `gflow.losses` -> `gflow.record` (how a run was made, `Trajectory`, files) -> `gflow.flow`
(`simulate`, `resume`, `simulate_many`, `train`) -> `gflow.analysis` -> `gflow.plot` -> `gflow.app`
(settings, reports, the `gflow` command); `gflow.solvers` stands on nothing but `gflow.common`
(checks, progress bars, the compilation cache, stored programs, the worker pool), under them all.
"""

from .common import _threads, _warm

_warm.prepare_environment()  # before equinox is imported (see common/_warm.py)

import jax as _jax  # noqa: E402

_jax.config.update("jax_enable_x64", True)
_threads.one_thread_cpu_client()  # before JAX creates its CPU client (see common/_threads.py)
_warm.enable_compilation_cache()

from importlib.metadata import PackageNotFoundError as _PNF
from importlib.metadata import version as _version

from . import analysis as analysis
from . import app as app
from . import data as data
from . import flow as flow
from . import losses as losses
from . import model as model
from . import plot as plot
from . import record as record
from . import solvers as solvers
from .analysis import Comparison as Comparison
from .analysis import compare as compare
from .app import ExperimentSettings as ExperimentSettings
from .app import sweep as sweep
from .common import release_compiled_programs as release_compiled_programs
from .data import AbstractDataSource as AbstractDataSource
from .data import InContextMarkovSpec as InContextMarkovSpec
from .data import MarkovSpec as MarkovSpec
from .data import SparseLagSpec as SparseLagSpec
from .flow import GradientField as GradientField
from .flow import default_save_times as default_save_times
from .flow import resume as resume
from .flow import simulate as simulate
from .flow import simulate_many as simulate_many
from .flow import stack_params as stack_params
from .flow import train as train
from .losses import LossFunction as LossFunction
from .losses import LossSpec as LossSpec
from .losses import loss_function as loss_function
from .losses import population_loss as population_loss
from .model import ParamLayout as ParamLayout
from .model import TransformerConfig as TransformerConfig
from .model import TransformerParams as TransformerParams
from .model import init_params as init_params
from .record import RunRecord as RunRecord
from .record import RunStatus as RunStatus
from .record import SolverSpec as SolverSpec
from .record import TrainingSpec as TrainingSpec
from .record import Trajectory as Trajectory
from .record import load as load

try:
    __version__ = _version("gflow")
except _PNF:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
