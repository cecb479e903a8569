"""The model: the one-layer Transformer's configuration, weights (each with its shape and
initialiser), forward pass (one pipeline for the sequence and the type formulations), and the flat
layout the solvers integrate.

Adding a weight or a sub-block touches this package only: a field of `TransformerParams` with its
row in `PARAMETERS`, and its place in the pipeline of `_forward.py`.
"""

from ._config import ACTIVATIONS as ACTIVATIONS
from ._config import LAYERNORMS as LAYERNORMS
from ._config import TransformerConfig as TransformerConfig
from ._forward import attention_input as attention_input
from ._forward import embed as embed
from ._forward import layernorm as layernorm
from ._forward import mlp as mlp
from ._forward import readout as readout
from ._forward import sequence_attention as sequence_attention
from ._forward import sequence_attention_layers as sequence_attention_layers
from ._forward import sequence_logits as sequence_logits
from ._forward import stream_readout as stream_readout
from ._forward import type_attention as type_attention
from ._forward import type_logits as type_logits
from ._forward import type_scores as type_scores
from ._forward import unembedding as unembedding
from ._forward import values as values
from ._layout import ParamLayout as ParamLayout
from ._params import PARAM_NAMES as PARAM_NAMES
from ._params import PARAMETERS as PARAMETERS
from ._params import Constant as Constant
from ._params import Gaussian as Gaussian
from ._params import Parameter as Parameter
from ._params import TransformerParams as TransformerParams
from ._params import check_init_scale as check_init_scale
from ._params import check_params as check_params
from ._params import init_params as init_params
from ._params import param_shapes as param_shapes
from ._params import params_from_arrays as params_from_arrays
from ._params import params_to_arrays as params_to_arrays
