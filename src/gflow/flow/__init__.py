"""The flow layer: everything that computes a trajectory from a record.

- `_arguments.py`: the arguments every entry point shares, checked once, and the record they make;
- `_plan.py`: the run's plan (solver, vector field, layout, chunk strategy), made once per record;
- `_chunk.py`: one chunk's compiled solve, its named result, and the chunk strategies (the seam for
  backends and per-chunk method switches);
- `_loop.py`: the chunk loop (progress, checkpoints, Ctrl-C, statuses);
- `_simulate.py`: `simulate`, `resume`, `run_record`;
- `_ensemble.py`, `_workers.py`: `simulate_many` and its ways of solving the members (`BATCHING`);
- `_train.py`: discrete optimisers on the same losses.
"""

from ._arguments import DEFAULT_ATOL as DEFAULT_ATOL
from ._arguments import DEFAULT_MAX_STEPS as DEFAULT_MAX_STEPS
from ._arguments import DEFAULT_N_SAVE as DEFAULT_N_SAVE
from ._arguments import DEFAULT_RTOL as DEFAULT_RTOL
from ._arguments import check_problem as check_problem
from ._arguments import default_save_times as default_save_times
from ._arguments import flow_record as flow_record
from ._chunk import AbstractChunkStrategy as AbstractChunkStrategy
from ._chunk import ChunkResult as ChunkResult
from ._chunk import ShardedBatch as ShardedBatch
from ._chunk import SingleState as SingleState
from ._ensemble import BATCHING as BATCHING
from ._ensemble import AbstractBatching as AbstractBatching
from ._ensemble import simulate_many as simulate_many
from ._ensemble import stack_params as stack_params
from ._loop import integrate as integrate
from ._plan import GradientField as GradientField
from ._plan import RunPlan as RunPlan
from ._simulate import check_resume_budget as check_resume_budget
from ._simulate import continue_run as continue_run
from ._simulate import resume as resume
from ._simulate import run_record as run_record
from ._simulate import simulate as simulate
from ._train import OPTIMIZERS as OPTIMIZERS
from ._train import make_optimizer as make_optimizer
from ._train import save_steps as save_steps
from ._train import train as train
