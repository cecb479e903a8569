"""Writing output safely: every file atomically, one writer per output folder, and never over files
gflow did not write.

- **Atomic files** (`atomic_file`): the content goes to a temporary file in the same folder, which is
  renamed over the target only when it is complete. An interruption or a full disk at any moment
  leaves either the old file or the new one, never half of one; a full disk is reported as such
  (`DiskFullError`, naming the file), the old file kept.
- **One writer per folder** (`claim_output_folder`): a run holds an exclusive lock on
  `<folder>/.gflow.lock` (`fcntl.flock`, released by the system when the process ends, however it
  ends) and writes its process id there; a second run into the same folder is refused, naming it.
- **Foreign folders**: a folder that exists, is not empty and holds no `.gflow-output` marker (and no
  `settings.json` of an earlier gflow) is refused: gflow writes only into folders it made or owns.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import time

from ._checks import check_writable_folder

LOCK_FILE = ".gflow.lock"
MARKER_FILE = ".gflow-output"
LEGACY_MARKERS = ("settings.json",)
"""What marks a folder written by a gflow before the marker existed."""


class DiskFullError(OSError):
    """The disk filled up while a file was written; the previous version of the file is kept."""


def user_file_mode() -> int:
    """The permissions a new file gets under the user's umask (`0o666 & ~umask`)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", **open_kw):
    """Open a temporary file beside `path` for writing; on a clean exit it replaces `path`, on any
    error (Ctrl-C included) it is removed and `path` is left as it was."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".gflow-", suffix=suffix)
    try:
        with os.fdopen(fd, mode, **open_kw) as fh:
            yield fh
        os.chmod(tmp, user_file_mode())  # mkstemp makes it private (0600); give it the usual permissions
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(e.errno, f"disk full while writing {path!r}; the previous version of the file "
                                         "(if any) is kept. Free some space and run again") from None
        raise
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


def check_output_folder(folder: str | os.PathLike) -> str:
    """`folder` as a string if gflow may write there: missing, empty, or already a gflow output."""
    folder = os.fspath(folder)
    if not os.path.exists(folder):
        return folder
    if not os.path.isdir(folder):
        raise ValueError(f"the output folder {folder!r} is a file; choose a folder (it is created if missing).")
    names = set(os.listdir(folder)) - {LOCK_FILE}
    if names and MARKER_FILE not in names and not names & set(LEGACY_MARKERS):
        shown = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
        raise ValueError(f"the output folder {folder!r} already holds files gflow did not write ({shown}); gflow "
                         "never writes over them. Choose a new or empty folder.")
    return folder


_HELD: dict[str, int] = {}
"""Folders this process holds, by real path, with how many nested claims hold each."""


@contextlib.contextmanager
def claim_output_folder(folder: str | os.PathLike):
    """Hold `folder` for this process for the length of the block: it is created if missing, marked
    as a gflow output, and locked; another process holding it already is a `ValueError` naming it.
    Claims nest: a claim inside one of the same folder by this process holds it already."""
    import fcntl

    folder = check_writable_folder("out_dir", check_output_folder(folder))  # made if missing
    key = os.path.realpath(folder)
    if _HELD.get(key):
        _HELD[key] += 1
        try:
            yield folder
        finally:
            _HELD[key] -= 1
        return
    lock_path = os.path.join(folder, LOCK_FILE)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise ValueError(f"the output folder {folder!r} is in use by another gflow run ({holder}); wait for "
                             "it to finish, or choose another folder (--out).") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        marker = os.path.join(folder, MARKER_FILE)
        if not os.path.exists(marker):
            with atomic_file(marker) as fh:
                fh.write("A gflow output: `gflow run`, `gflow demo` and `gflow resume` may write here.\n")
        _HELD[key] = 1
        yield folder
    finally:
        _HELD.pop(key, None)
        os.close(fd)  # releases the lock
