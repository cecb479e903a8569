"""Warm starts: JAX's persistent compilation cache, on by default, so that a second run of the same
problem in a new process skips XLA compilation (docs/performance.md).

- **Where.** `$GFLOW_COMPILATION_CACHE` if set (a folder; `0`, `off` or an empty value turn the
  cache off), else `$XDG_CACHE_HOME/gflow/jax` (default `~/.cache/gflow/jax`). A cache folder the
  user gave JAX already (`jax_compilation_cache_dir`, `JAX_COMPILATION_CACHE_DIR`) is kept as it is.
- **What can be cached.** JAX does not store executables that call back into Python. Equinox's
  runtime checks (`eqx.error_if`) are such callbacks, so gflow sets `EQX_ON_ERROR=off` unless the
  user set it: gflow checks every input in Python before it traces anything, and reports solver
  failures through the solve's result code (`throw=False`), so the in-graph checks add nothing to a
  gflow solve. It must be set before equinox is imported, which is why this module runs first. The
  progress bar is updated from Python between chunks, not from inside the solve.
- **What it buys.** Compilation is most of a small run's first call (the demo: about 9 s of 10);
  the cache replaces it by reading a file. Tracing (building the program in Python) is not cached
  by JAX; gflow stores its traced solves itself, next to the cache (`_programs.py`).
"""

from __future__ import annotations

import os

OFF = ("0", "off", "false", "no", "")
MIN_COMPILE_SECONDS = 0.0
"""Programs that compile faster than this are not written to the cache. Every program is: reading a
small entry takes milliseconds, compiling even the analysis's small programs 20-150 ms each (a warm
demo is 0.2 s faster than with a 0.1 s threshold). The entries are small (the demo's 30 take 0.7 MB)."""


def cache_folder() -> str | None:
    """The folder gflow puts JAX's compilation cache in, or `None` when it is turned off."""
    given = os.environ.get("GFLOW_COMPILATION_CACHE")
    if given is not None:
        return None if given.strip().lower() in OFF else os.path.expanduser(given)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gflow", "jax")


def prepare_environment() -> None:
    """Before equinox is imported: no host callbacks from its runtime checks (unless the user chose)."""
    os.environ.setdefault("EQX_ON_ERROR", "off")


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
        os.makedirs(folder, exist_ok=True)
    except OSError:  # a read-only home: run without the cache rather than fail
        return None
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return folder
