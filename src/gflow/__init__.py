"""gflow: exact gradient flow of a one-layer Transformer on Markov data.

Importing gflow turns on JAX's float64 mode (`jax_enable_x64`): gradient flows are integrated in
double precision, and the exactness checks (enumerate == counts to 1e-10) need it.
"""

import jax as _jax

_jax.config.update("jax_enable_x64", True)

from importlib.metadata import PackageNotFoundError as _PNF
from importlib.metadata import version as _version

from . import analysis as analysis
from . import plot as plot
from ._compare import Comparison as Comparison
from ._compare import compare as compare
from ._ensemble import simulate_many as simulate_many
from ._ensemble import stack_params as stack_params
from ._flow import default_save_times as default_save_times
from ._flow import resume as resume
from ._flow import simulate as simulate
from ._loss import LossFunction as LossFunction
from ._loss import loss_function as loss_function
from ._loss import population_loss as population_loss
from ._markov import MarkovSpec as MarkovSpec
from ._model import TransformerConfig as TransformerConfig
from ._model import TransformerParams as TransformerParams
from ._model import init_params as init_params
from ._settings import ExperimentSettings as ExperimentSettings
from ._train import train as train
from ._trajectory import Trajectory as Trajectory
from ._trajectory import load as load

try:
    __version__ = _version("gflow")
except _PNF:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
