"""Argument checks shared by every entry point: one message per kind of mistake, written once.

Each check raises `ValueError` naming the argument, the value received and what to pass instead,
and returns the value in the form the caller works with (a Python `int`, a `float`, a PRNG key).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class ArgumentError(ValueError):
    """A `ValueError` that knows which argument was wrong (`argument`), so that a caller which took
    the value from elsewhere (a settings file's `[flow].rtol`) can say where it came from."""

    def __init__(self, message: str, argument: str):
        super().__init__(message)
        self.argument = argument


@contextlib.contextmanager
def checking(argument: str):
    """Any `ValueError` raised inside is re-raised as an `ArgumentError` for `argument` (its message
    unchanged; an `ArgumentError` already naming its argument passes through)."""
    try:
        yield
    except ArgumentError:
        raise
    except ValueError as e:
        raise ArgumentError(str(e), argument) from None


def is_integer(value: Any) -> bool:
    """A Python or numpy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_real(value: Any) -> bool:
    """A real number: Python or numpy, or a 0-d integer/float array (jax or numpy); not a bool."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (int, float, np.integer, np.floating)):
        return True
    if isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) == 0:
        return bool(jnp.issubdtype(value.dtype, jnp.integer) or jnp.issubdtype(value.dtype, jnp.floating))
    return False


def check_positive(name: str, value: Any, integer: bool = False):
    """`value` as a Python `int` (with `integer`) or `float`, which must be finite and > 0."""
    ok = is_integer(value) if integer else is_real(value)
    if not ok or not math.isfinite(float(value)) or float(value) <= 0:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"`{name}` must be {kind} > 0; got {value!r}.")
    return int(value) if integer else float(value)


def check_int(name: str, value: Any, minimum: int) -> int:
    """`value` as a Python `int`, which must be at least `minimum`."""
    if not is_integer(value) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}; got {value!r}.")
    return int(value)


def check_choice(name: str, value: Any, choices) -> str:
    """`value`, which must be one of `choices` (strings)."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}; got {value!r}.")
    return value


def as_prng_key(name: str, key: Any) -> jax.Array:
    """A typed PRNG key from a key (typed or raw `uint32` data) or from an integer seed."""
    if is_integer(key):
        if not -(2**63) <= int(key) < 2**64:
            raise ValueError(f"`{name}`: the integer seed {int(key)} is out of range; use a seed in [0, 2**64).")
        return jax.random.key(int(key))
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.ndim == 0:
        return key
    if isinstance(key, (jax.Array, np.ndarray)) and key.dtype == np.uint32 and key.shape == (2,):
        return jax.random.wrap_key_data(jnp.asarray(key))
    raise ValueError(f"`{name}` must be a PRNG key (jax.random.key(seed)) or an integer seed; got {key!r}.")


def key_data(key: jax.Array) -> tuple[int, ...]:
    """The raw words of a typed PRNG key, as plain integers (what trajectory files store)."""
    return tuple(int(x) for x in np.asarray(jax.random.key_data(key)).ravel())


def check_writable_file(name: str, path) -> str:
    """`path` as a string, after making sure a file can be written there (its folder is created).

    Checked before a run starts, so that a bad output path costs nothing computed."""
    try:
        path = os.fspath(path)
    except TypeError:
        raise ValueError(f"`{name}` must be a file path; got {path!r}.") from None
    if os.path.isdir(path):
        example = os.path.join(path, "run.npz")
        raise ValueError(f"`{name}` {path!r} is a directory; give a file path such as {example!r}.")
    check_writable_folder(name, os.path.dirname(os.path.abspath(path)))
    return path


def check_writable_folder(name: str, folder) -> str:
    """`folder` as a string, created if missing, after writing and removing a probe file in it."""
    folder = os.fspath(folder)
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".gflow-probe-"):
            pass
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ValueError(f"`{name}`: cannot write into {folder!r} ({reason}); choose a folder you can write "
                         "to.") from None
    return folder
