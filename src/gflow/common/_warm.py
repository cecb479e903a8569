"""Warm starts: JAX's persistent compilation cache, on by default, so that a second run of the same
problem in a new process skips XLA compilation (docs/performance.md).

- **Where.** `$GFLOW_COMPILATION_CACHE` if set (a folder; `0`, `off` or an empty value turn the
  cache off), else `$XDG_CACHE_HOME/gflow/jax` (default `~/.cache/gflow/jax`). A cache folder the
  user gave JAX already (`jax_compilation_cache_dir`, `JAX_COMPILATION_CACHE_DIR`) is kept as it is.
  The folder is created private (0700); one that other users can write to, or that another user owns,
  is refused with a warning (JAX runs what it reads from there). gflow's own stored programs carry a
  digest that is checked on every read (`_programs.py`); JAX's compiled entries do not, so the
  folder's permissions are what protects them.
- **What can be cached.** JAX does not store executables that call back into Python. Equinox's
  runtime checks (`eqx.error_if`) are such callbacks, so gflow traces its own solves with them off
  (`solve_checks_off`), unless the user set `EQX_ON_ERROR`: gflow checks every input in Python
  before it traces anything, and reports solver failures through the solve's result code
  (`throw=False`), so the in-graph checks add nothing to a gflow solve. This is scoped to gflow's
  solves: a user's own `eqx.error_if` in the same process still raises. The progress bar is updated
  from Python between chunks, not from inside the solve.
- **How big.** gflow's folder is kept under `JAX_CACHE_MAX_BYTES`: when a process turns the cache
  on, the least recently used entries past it are deleted (`prune_least_recent`). Every change to
  gflow or to a package's version makes new entries and leaves the old ones unused, so an unbounded
  folder only grows. A folder the user gave JAX is theirs to manage (JAX's own
  `jax_compilation_cache_max_size`).
- **What it buys.** Compilation is most of a small run's first call (the demo: about 9 s of 10);
  the cache replaces it by reading a file. Tracing (building the program in Python) is not cached
  by JAX; gflow stores its traced solves itself, next to the cache (`_programs.py`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings

from ._prune import prune_least_recent

OFF = ("0", "off", "false", "no", "")
MIN_COMPILE_SECONDS = 0.0
"""Programs that compile faster than this are not written to the cache. Every program is: reading a
small entry takes milliseconds, compiling even the analysis's small programs 20-150 ms each (a warm
demo is 0.2 s faster than with a 0.1 s threshold). The entries are small (the demo's 30 take 0.7 MB)."""


JAX_CACHE_MAX_BYTES = 2**30
"""gflow's compilation cache folder is kept under this size (1 GiB; the stored programs' subfolder
has its own bound, `PROGRAMS_MAX_BYTES`). An entry is 5-520 kB (the demo's 30: 0.7 MB; a large
flow's chunk solve 0.5 MB), so about two thousand solves stay cached."""

JAX_CACHE_SUFFIX = "-cache"
"""How JAX names its entries (`jax._src.lru_cache`); its access-time files end in `-atime`."""


def cache_folder() -> str | None:
    """The folder gflow puts JAX's compilation cache in, or `None` when it is turned off."""
    given = os.environ.get("GFLOW_COMPILATION_CACHE")
    if given is not None:
        return None if given.strip().lower() in OFF else os.path.expanduser(given)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gflow", "jax")


def prepare_environment() -> None:
    """Before equinox is imported. Nothing to do since the runtime checks are scoped to gflow's own
    solves (`solve_checks_off`); kept so that the import order stays explicit."""


def solve_error_mode() -> str:
    """How equinox's runtime checks behave inside gflow's solves: the user's `EQX_ON_ERROR` if set,
    else `"off"` (so that the compiled solve can be cached)."""
    return os.environ.get("EQX_ON_ERROR") or "off"


_SCOPE = {"depth": 0, "previous": None, "lock": threading.Lock()}
"""Nested and concurrent scopes (threads solving ensemble members) share one setting: the first to
enter sets it, the last to leave restores the process's own."""


@contextlib.contextmanager
def solve_checks_off():
    """Trace the block's programs with equinox's runtime checks as `solve_error_mode()` says, and
    restore the process's own setting afterwards (equinox reads it when a program is traced)."""
    try:
        from equinox import _errors
    except ImportError:  # a future equinox without the module: run with its own setting
        yield
        return
    if getattr(_errors, "EQX_ON_ERROR", None) is None:
        yield
        return
    with _SCOPE["lock"]:
        if _SCOPE["depth"] == 0:
            _SCOPE["previous"] = _errors.EQX_ON_ERROR
            _errors.EQX_ON_ERROR = solve_error_mode()
        _SCOPE["depth"] += 1
    try:
        yield
    finally:
        with _SCOPE["lock"]:
            _SCOPE["depth"] -= 1
            if _SCOPE["depth"] == 0:
                _errors.EQX_ON_ERROR = _SCOPE["previous"]


def enable_compilation_cache() -> str | None:
    """Turn on JAX's persistent compilation cache in `cache_folder()` (unless JAX already has one or
    the user turned it off); returns the folder in use."""
    import jax

    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    folder = cache_folder()
    if folder is None:
        return None
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        info = os.stat(folder)
    except OSError:  # a read-only home: run without the cache rather than fail
        return None
    if info.st_mode & 0o022 or (hasattr(os, "getuid") and info.st_uid != os.getuid()):
        # compiled programs are run as they are read: a folder others can write is a way in
        warnings.warn(f"gflow: not using the compilation cache {folder!r}: it is writable by other users or owned "
                      "by another; make it yours alone (chmod 700) or set GFLOW_COMPILATION_CACHE to another folder.",
                      stacklevel=2)
        return None
    prune_least_recent(folder, JAX_CACHE_SUFFIX, JAX_CACHE_MAX_BYTES)
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return folder
