"""Analysis along a trajectory: metrics, stage detection, stage-wise linearisation, and the
comparison of discrete training with the flow."""

from ._attention import attention_statistics as attention_statistics
from ._compare import Comparison as Comparison
from ._compare import compare as compare
from ._compare import event_shift_table as event_shift_table
from ._compare import sharpness as sharpness
from ._events import EVENT_COLORS as EVENT_COLORS
from ._events import EVENT_KINDS as EVENT_KINDS
from ._events import Event as Event
from ._events import EventKind as EventKind
from ._hessian import Linearization as Linearization
from ._hessian import dense_hessian as dense_hessian
from ._hessian import hessian_vector_product as hessian_vector_product
from ._hessian import lanczos_extremes as lanczos_extremes
from ._hessian import linearize as linearize
from ._lag_blocks import lag_block_attention as lag_block_attention
from ._lag_events import LEAN as LEAN
from ._lag_events import LagProbes as LagProbes
from ._lag_events import detect_lag_events as detect_lag_events
from ._lag_events import lag_probes as lag_probes
from ._lag_events import restricted_teacher_kl as restricted_teacher_kl
from ._lag_events import uniform_block_share as uniform_block_share
from ._linearize import PlateauEscape as PlateauEscape
from ._linearize import linearization_table as linearization_table
from ._linearize import plateau_linearization as plateau_linearization
from ._metrics import Metrics as Metrics
from ._metrics import compute_metrics as compute_metrics
from ._metrics import log_time_slope as log_time_slope
from ._metrics import open_directions as open_directions
from ._metrics import stable_rank as stable_rank
from ._stages import Episode as Episode
from ._stages import detect_stages as detect_stages
from ._stages import episodes as episodes
from ._stages import find_plateaus as find_plateaus
from ._table import format_time as format_time
from ._table import stage_table as stage_table
