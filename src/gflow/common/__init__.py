"""What every layer shares: argument checks, progress bars, and the runtime machinery that makes
runs start fast and use the cores (the compilation cache, stored programs, the worker pool, the
thread counts).

Nothing here knows about Markov chains, models or flows; every other folder may import from here.
`_warm.py` must stay importable without equinox: `gflow/__init__.py` runs it before equinox is
imported (see its docstring).
"""

from ._checks import ArgumentError as ArgumentError
from ._checks import as_prng_key as as_prng_key
from ._checks import check_choice as check_choice
from ._checks import check_int as check_int
from ._checks import check_positive as check_positive
from ._checks import check_writable_file as check_writable_file
from ._checks import check_writable_folder as check_writable_folder
from ._checks import checking as checking
from ._checks import is_integer as is_integer
from ._checks import is_real as is_real
from ._checks import key_data as key_data
from ._files import MARKER_FILE as MARKER_FILE
from ._files import DiskFullError as DiskFullError
from ._files import atomic_file as atomic_file
from ._files import check_output_folder as check_output_folder
from ._files import claim_output_folder as claim_output_folder
from ._files import user_file_mode as user_file_mode
from ._memory import available_bytes as available_bytes
from ._memory import check_memory as check_memory
from ._memory import format_bytes as format_bytes
from ._pool import shutdown_pool as shutdown_pool
from ._pool import worker_pool as worker_pool
from ._programs import memory_map_count as memory_map_count
from ._programs import note_new_program as note_new_program
from ._programs import release_compiled_programs as release_compiled_programs
from ._programs import stored_filter_jit as stored_filter_jit
from ._programs import stored_program as stored_program
from ._progress import SavePointLoop as SavePointLoop
from ._progress import progress_bar as progress_bar
from ._progress import save_point_loop as save_point_loop
from ._threads import blas_threads_for as blas_threads_for
from ._threads import one_thread_cpu_client as one_thread_cpu_client
from ._warm import cache_folder as cache_folder
from ._warm import enable_compilation_cache as enable_compilation_cache
from ._warm import prepare_environment as prepare_environment
from ._warm import solve_checks_off as solve_checks_off
