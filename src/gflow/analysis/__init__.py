"""Analysis along a trajectory: metrics, stage detection, and stage-wise linearisation."""

from ._linearize import Linearization as Linearization
from ._linearize import PlateauEscape as PlateauEscape
from ._linearize import lanczos_extremes as lanczos_extremes
from ._linearize import linearization_table as linearization_table
from ._linearize import linearize as linearize
from ._linearize import plateau_linearization as plateau_linearization
from ._metrics import Metrics as Metrics
from ._metrics import compute_metrics as compute_metrics
from ._metrics import log_time_slope as log_time_slope
from ._metrics import open_directions as open_directions
from ._metrics import stable_rank as stable_rank
from ._stages import Event as Event
from ._stages import detect_stages as detect_stages
from ._stages import find_plateaus as find_plateaus
from ._stages import stage_table as stage_table
