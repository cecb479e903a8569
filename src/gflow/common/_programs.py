"""Stored programs: a compiled solve that a new process loads instead of tracing it again.

JAX's persistent compilation cache (`common/_warm.py`) skips XLA compilation in a new process, but not
tracing: building the solve's program in Python (diffrax's step loop, the BDF solver, the loss and
its derivatives) still takes about a second each time, which is most of what a warm `gflow demo`
spends on its flow. So the first process *exports* the solve (`jax.export`: the traced program as
StableHLO) and writes it next to the compilation cache; later processes read it back, and their only
work is a cache hit on its compilation.

- **Key.** A stored program is found by a hash of everything that decides it: gflow's own source
  files, the versions of the packages that build it (jax, jaxlib, diffrax, equinox, lineax,
  optimistix), the backend, float64, `EQX_ON_ERROR`, the program's static part (its tree structure
  and non-array leaves: loss method, model config, solver class and settings, parameter layout) and
  the shapes and dtypes of its array inputs. Changing any of them makes a new program; nothing is
  ever reused across them.
- **When.** Only for programs gflow built itself (`stored_program`'s caller decides: a solver the
  user passed as an instance may hold code gflow cannot fingerprint, and is traced as before), and
  only when the static part has a description that is the same in every process (`describe`).
  Anything that cannot be exported (a host callback, an unsupported custom call) falls back to the
  ordinary compiled function, with the same results.
- **Where.** `<compilation cache folder>/programs/`; `GFLOW_COMPILATION_CACHE=off` turns both off.
  A file that cannot be read (truncated, from an incompatible JAX) is ignored and rewritten. The
  folder is kept under `PROGRAMS_MAX_BYTES` by deleting the least recently used programs.
- **Memory.** A loaded program holds memory and about ten memory maps until it is dropped; a
  process near Linux's map limit segfaults loading the next one. `note_new_program` counts new
  programs and releases them all (`release_compiled_programs`) past `MAP_SHARE_LIMIT` of the limit.
- **Trust.** Each file starts with the SHA-256 of its program, checked on every read: a damaged or
  altered file is exported again, never run. The folder must not be writable by others (someone who
  can write there can also write a matching digest); `_warm.py` refuses a cache folder that is.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import tempfile
import warnings
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._prune import prune_least_recent
from ._warm import cache_folder, solve_error_mode

SUFFIX = ".jaxexport"
PACKAGES = ("jax", "jaxlib", "diffrax", "equinox", "lineax", "optimistix")
ABBREVIATED_ARRAY = re.compile(r"\b(?:f|i|u|c|bool)\d*\[[\d,]*\]")
"""How equinox prints an array it does not show in full (`f64[3]`), say in a static field: such a
description cannot tell two values apart."""
FINGERPRINTED = ("gflow", *PACKAGES)
"""Packages whose functions a static part may name: their source or version is in the key."""

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
"""The `gflow` package folder: every source file under it is in the key."""

_loaded: dict[str, Callable] = {}
_unexportable: set[str] = set()
_filter_tables: list[dict] = []
"""Every `stored_filter_jit`'s table of programs in this process, so that they can be released."""

MAP_SHARE_LIMIT = 0.6
"""The share of the system's memory-map limit (`vm.max_map_count`, 65,530 by default on Linux) a
process may hold before gflow releases its compiled programs. Each loaded XLA:CPU program holds about
ten memory maps (measured: 9.9 a program, 0.9 after `jax.clear_caches()`) until it is dropped, and a
process that reaches the limit crashes with a segmentation fault in the next program it loads
(seen 2026-12-03: a test worker that had loaded ~6,400 programs died reading a cached one at 64,416
maps). 0.6 leaves room for a program's own maps and for whatever the caller holds."""
MAP_CHECK_EVERY = 32
"""New programs between two counts of the process's memory maps (a count reads `/proc/self/maps`:
about 5 ms at 60,000 maps)."""
_new_programs = 0
_warned_maps = False
_pruned = False  # whether this process has pruned the folder (`prune_programs`, once, on its first write)


def program_folder() -> str | None:
    """Where stored programs live, or `None` when the compilation cache is turned off."""
    base = jax.config.jax_compilation_cache_dir or cache_folder()
    return None if not base else os.path.join(base, "programs")


@functools.cache
def build_fingerprint() -> str:
    """A hash of gflow's source files and of the versions and settings that shape a traced program."""
    h = hashlib.sha256()
    root = PACKAGE_ROOT
    for folder, subfolders, files in sorted(os.walk(root)):
        subfolders.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                with open(os.path.join(folder, name), "rb") as fh:
                    h.update(os.path.relpath(os.path.join(folder, name), root).encode() + b"\0" + fh.read())
    for pkg in PACKAGES:
        try:
            h.update(f"{pkg}={version(pkg)};".encode())
        except PackageNotFoundError:
            h.update(f"{pkg}=none;".encode())
    h.update(f"{jax.default_backend()};x64={jax.config.jax_enable_x64};"
             f"eqx={solve_error_mode()}".encode())
    return h.hexdigest()


def _spec(x) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x))


def describe(static: Any) -> str | None:
    """A description of a program's static part that is complete and the same in every process:
    its tree structure (node types and their static fields) and its non-array leaves, functions by
    their qualified name. `None` when no such description exists: an array constant or anything
    printed by address or abbreviated, or a function from outside the fingerprinted packages (its
    code is not in the key)."""
    leaves, treedef = jax.tree.flatten(static)
    parts = [repr(treedef)]
    for leaf in leaves:
        if isinstance(leaf, jax.Array | np.ndarray | np.generic):  # a constant: its printout may be summarised
            return None
        if callable(leaf):
            module = getattr(leaf, "__module__", None) or ""
            qualname = getattr(leaf, "__qualname__", "")
            if module.split(".")[0] not in FINGERPRINTED or "<" in qualname:
                return None
            parts.append(f"{module}.{qualname}")
        else:
            parts.append(repr(leaf))
    text = "\n".join(parts)
    return None if " at 0x" in text or "..." in text or ABBREVIATED_ARRAY.search(text) else text


def stored_program(name: str, fn: Callable[..., Any], static: Any, example: tuple) -> Callable | None:
    """`fn(static, *args)` as a program stored on disk, called as `program(*args)`; `None` when it
    cannot be stored (cache off, a static part that does not print in full, an export failure), in
    which case the caller uses its own compiled function.

    `example`: arguments with the shapes and dtypes of every later call (pytrees of arrays)."""
    folder = program_folder()
    if folder is None:
        return None
    described = describe(static)
    if described is None:
        return None
    leaves, treedef = jax.tree.flatten(example)
    specs = [_spec(x) for x in leaves]
    key = hashlib.sha256("\n".join([build_fingerprint(), name, described, repr(treedef), repr(specs)]).encode())
    key = f"{name}-{key.hexdigest()[:40]}"
    if key in _unexportable:
        return None
    if key not in _loaded:
        exported = _read(os.path.join(folder, key + SUFFIX))
        if exported is None:
            exported = _export(fn, static, treedef, specs)
            if exported is None:  # remembered, so that the failed export is not traced again
                _unexportable.add(key)
                return None
            _write(folder, key + SUFFIX, exported)
        compiled = jax.jit(exported.call)
        _loaded[key] = lambda *args: compiled(*jax.tree.leaves(args))
    return _loaded[key]


def release_compiled_programs() -> None:
    """Drop every compiled program this process holds: gflow's stored programs and JAX's own caches
    (`jax.clear_caches()`). Programs are found again on their next call (from the compilation cache
    and the stored programs on disk, or traced again), with the same results. Frees their memory
    and memory maps in a long process: a sweep in one process, a notebook, a test worker."""
    global _new_programs
    _loaded.clear()
    for table in _filter_tables:
        table.clear()
    jax.clear_caches()
    _new_programs = 0


def memory_map_count() -> tuple[int, int] | None:
    """`(maps held by this process, the system's limit)`, or `None` where Linux's `/proc` does not
    say."""
    try:
        with open("/proc/sys/vm/max_map_count") as fh:
            limit = int(fh.read())
        with open("/proc/self/maps", "rb") as fh:
            held = fh.read().count(b"\n")
    except (OSError, ValueError):
        return None
    return held, limit


def note_new_program() -> None:
    """Count a program this process has just built or loaded (call it outside any trace); every
    `MAP_CHECK_EVERY`, release the compiled programs when the process holds more than
    `MAP_SHARE_LIMIT` of the memory-map limit (see there why)."""
    global _new_programs, _warned_maps
    _new_programs += 1
    if _new_programs % MAP_CHECK_EVERY:
        return
    counted = memory_map_count()
    if counted is None or counted[0] <= MAP_SHARE_LIMIT * counted[1]:
        return
    release_compiled_programs()
    after = memory_map_count()
    if after is not None and after[0] > MAP_SHARE_LIMIT * after[1] and not _warned_maps:
        _warned_maps = True
        warnings.warn(f"gflow: this process holds {after[0]:,} memory maps of the system's limit of {after[1]:,} "
                      "(vm.max_map_count) even after releasing its compiled programs; a process that reaches "
                      "the limit crashes. Drop compiled functions you no longer need, or raise the limit "
                      "(`sysctl vm.max_map_count=262144`).", RuntimeWarning, stacklevel=3)


def _export(fn, static, treedef, specs):
    def flat(*leaves):
        return fn(static, *jax.tree.unflatten(treedef, leaves))

    try:
        return jax.export.export(jax.jit(flat))(*specs)
    except Exception:  # noqa: BLE001 - not exportable (callbacks, custom calls): trace as before
        return None


DIGEST = hashlib.sha256().digest_size


def _read(path: str):
    """The program stored at `path`, or `None` when it is missing, unreadable or fails its check: the
    file starts with the SHA-256 of the rest, so a truncated or tampered program is exported again,
    never run."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        digest, payload = data[:DIGEST], data[DIGEST:]
        if len(data) <= DIGEST or hashlib.sha256(payload).digest() != digest:
            return None
        exported = jax.export.deserialize(bytearray(payload))
    except Exception:  # noqa: BLE001 - missing, truncated or from another JAX: export again
        return None
    try:
        os.utime(path)  # its time is its last use: the folder is pruned by it (`prune_programs`)
    except OSError:
        pass
    return exported


def _write(folder: str, filename: str, exported) -> None:
    """Atomically (a temporary file renamed over the target), so a reader never sees half a file."""
    try:
        payload = exported.serialize()
        data = hashlib.sha256(payload).digest() + payload
        os.makedirs(folder, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".program-")
    except Exception:  # noqa: BLE001 - a read-only cache or missing flatbuffers: run without storing
        return
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, os.path.join(folder, filename))
    except OSError:
        if os.path.exists(tmp):
            os.remove(tmp)
        return
    global _pruned
    if not _pruned:  # once a process, when it adds a program
        _pruned = True
        prune_programs(folder)


PROGRAMS_MAX_BYTES = 512 * 2**20
"""The stored programs' folder is kept under this size (512 MiB): every change to gflow's sources or
to a package's version makes new programs and leaves the old ones unused (a developer's folder grew
to 72 MB, 1,537 programs, in one day), so the least recently used are deleted past it. A program is
3-130 kB (median 18 kB over 1,746 measured); the demo stores 12, 316 kB."""


def prune_programs(folder: str, max_bytes: int | None = None) -> int:
    """Delete the least recently used programs in `folder` (every read renews a program's modification
    time) until the rest fit in `max_bytes` (default `PROGRAMS_MAX_BYTES`); the number deleted. A
    program deleted while another process wants it is exported again there, never half-read (files
    are replaced whole and checked)."""
    return prune_least_recent(folder, SUFFIX, PROGRAMS_MAX_BYTES if max_bytes is None else max_bytes)


def stored_filter_jit(body: Callable) -> Callable:
    """`equinox.filter_jit(body)`, whose compiled program is also stored on disk (`stored_program`), so
    that a new process calls it without tracing it again: for the analysis's small programs (the
    dense Hessian, Newton's line search, the attention statistics), tracing cost 0.01-0.07 s each in
    every warm demo (about 0.25 s of its 6 s; measured 2026-12-03).

    `body(*args)` is split as `filter_jit` splits it: arrays (JAX or numpy) are the program's inputs,
    everything else is static. A static part that has no complete description (`describe`: a
    function from outside gflow, an array constant) is traced as `filter_jit` would. Programs are
    found again per process by the static part's identity (its leaves are kept alive with the
    program) and the inputs' shapes and dtypes, so a call costs about what `filter_jit`'s does (0.54
    against 0.59 ms for the demo's dense Hessian). Only for gflow's own module-level functions."""
    import equinox as eqx

    traced = eqx.filter_jit(body)
    name = f"{body.__module__}.{body.__qualname__}"
    if body.__module__.split(".")[0] != "gflow" or "<" in body.__qualname__:
        return traced  # its code is not in the key (`build_fingerprint` hashes gflow's sources)
    programs: dict[tuple, tuple] = {}
    _filter_tables.append(programs)

    def apply(static, dynamic):
        return body(*eqx.combine(dynamic, static))

    @functools.wraps(body)
    def call(*args):
        dynamic, static = eqx.partition(args, eqx.is_array)
        static_leaves, static_def = jax.tree.flatten(static)
        inputs, input_def = jax.tree.flatten(dynamic)
        key = (static_def, tuple(map(id, static_leaves)), input_def,
               tuple((np.shape(x), x.dtype) for x in inputs))
        entry = programs.get(key)
        if entry is None:
            if not any(isinstance(x, jax.core.Tracer) for x in inputs):  # never inside a caller's trace
                note_new_program()
            stored = stored_program(name, apply, static, (dynamic,))
            entry = programs[key] = (static_leaves, stored)  # the leaves: their ids stay theirs
        stored = entry[1]
        return traced(*args) if stored is None else stored(dynamic)

    return call
