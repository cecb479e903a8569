"""The record layer: how a run was made (`RunRecord`), how it ended (`RunStatus`), what it computed
(`Trajectory`), and the file that keeps all three (`.npz`, formats 1 and 2)."""

from ._file import FORMAT_VERSION as FORMAT_VERSION
from ._file import READABLE_FORMATS as READABLE_FORMATS
from ._file import package_versions as package_versions
from ._file import read_status as read_status
from ._record import RUN_KINDS as RUN_KINDS
from ._record import RunRecord as RunRecord
from ._record import SolverSpec as SolverSpec
from ._record import TrainingSpec as TrainingSpec
from ._status import STATUSES as STATUSES
from ._status import RunStatus as RunStatus
from ._trajectory import Trajectory as Trajectory
from ._trajectory import load as load
