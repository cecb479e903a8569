"""Population losses: the methods (`LOSS_METHODS`), the complete description of a run's loss
(`LossSpec`), and the loss as a function of the parameters (`LossFunction`)."""

from ._data import MAX_COUNT_STATES as MAX_COUNT_STATES
from ._data import MAX_ENUMERATED_SEQUENCES as MAX_ENUMERATED_SEQUENCES
from ._data import MAX_LOSS_BYTES as MAX_LOSS_BYTES
from ._data import SequenceData as SequenceData
from ._data import TypeData as TypeData
from ._function import LossFunction as LossFunction
from ._function import LossSpec as LossSpec
from ._function import check_dataset as check_dataset
from ._function import cross_entropy as cross_entropy
from ._function import evaluate as evaluate
from ._function import loss_and_gradient_norm as loss_and_gradient_norm
from ._function import loss_function as loss_function
from ._function import loss_spec as loss_spec
from ._function import population_loss as population_loss
from ._function import resolve_loss_spec as resolve_loss_spec
from ._methods import AUTO_ORDER as AUTO_ORDER
from ._methods import DEFAULT_SAMPLES as DEFAULT_SAMPLES
from ._methods import LOSS_METHODS as LOSS_METHODS
from ._methods import METHOD_NAMES as METHOD_NAMES
from ._methods import LossMethod as LossMethod
