"""Writing figures to disk: PNG and PDF side by side, a report's figures shared with a helper process.

Drawing a figure is single-threaded Python (matplotlib): the demo's three figures take about 2 s of
a warm run while the second core idles. `FigureWriter` starts a helper process when a run begins; it
imports matplotlib only (not gflow or JAX) while the flow runs, then waits. Figures are pickled to
the helper as soon as they are ready (`begin`: the demo's overview and attention figures, once the
stage events are known), and it draws them while this process goes on computing (the plateau
linearisations, which the last figure needs); `write` then draws the remaining figures here from the
last while the helper works from the first. Each figure is claimed before it is drawn (a file
created exclusively in a private folder), so each is drawn once, and the two meet wherever their
figures' costs put them. If the helper cannot start, dies, takes too long or a figure does not
pickle, this process draws what the helper did not finish: the files are the same either way.

Run as a script, this file is the helper: it reads pickled batches `([(index, pickled (figure,
stem)), ...], rc, claims)` from stdin until it is closed, and for each figure it can claim in
`claims` writes `stem.png` and `stem.pdf` under the parent's matplotlib settings `rc` and prints
`done <index>`; then `ok`.
"""

from __future__ import annotations

import os
import pickle
import select
import shutil
import subprocess
import sys
import tempfile
import time

HELPER_TIMEOUT = 300.0
"""Seconds the helper may take over its figure before this process draws it itself."""
PARENT_ONLY_RC = ("backend", "backend_fallback", "interactive", "webagg.port", "webagg.address")
"""Settings that belong to the parent's session, not to drawing a figure into a file."""


def write_png_and_pdf(fig, path_stem: str | os.PathLike) -> list[str]:
    """Write `fig` as `<stem>.png` and `<stem>.pdf`; returns both paths. Each file is written to a
    temporary file beside it and renamed over it when complete: an interruption leaves the old
    figure or the new one, never a truncated file.

    The figure is laid out once: the PDF keeps the PNG's positions (a second constrained layout would
    find the same ones, in figure fractions, and costs a third of a save)."""
    stem = os.fspath(path_stem)
    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    paths = [stem + ".png", stem + ".pdf"]
    engine = fig.get_layout_engine()
    try:
        _save_atomically(fig, paths[0])
        fig.set_layout_engine("none")
        _save_atomically(fig, paths[1])
    finally:
        fig.set_layout_engine(engine)
    return paths


def _save_atomically(fig, path: str) -> None:
    # (this file runs as the helper without gflow, so it does not use gflow.common's atomic_file)
    folder, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=os.path.splitext(name)[1])
    os.close(fd)
    try:
        fig.savefig(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class FigureWriter:
    """Writes a report's figures, using a second core when there is one (module docstring).

    Use as a context manager around the whole run, so that the helper starts early and is always
    stopped: `with FigureWriter() as writer: ...; writer.begin(early, out_dir); ...; writer.write(rest, out_dir)`.
    `begin` hands figures that are ready to the helper and returns at once, so that they are drawn
    while this process computes what the later figures need; `write` draws the rest and finishes
    everything begun."""

    def __init__(self, helper: bool = True):
        self._proc = None
        self._items: list[tuple] = []  # (figure, stem) of every figure begun or written, in order
        self._claims: str | None = None  # the claim folder shared with the helper while figures are pending
        self._handed: set[int] = set()  # the figures the helper was given
        self._output = b""  # what the helper has printed so far
        self._blas_limit = None  # this process's BLAS threads held down while the helper draws
        self.helped = 0
        """How many figures the helper drew (0 when this process drew them all)."""
        if helper and (os.cpu_count() or 1) > 1:
            try:
                self._proc = subprocess.Popen(
                    [sys.executable, os.path.abspath(__file__)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL, start_new_session=True)  # Ctrl-C stops the run, not the helper
            except OSError:
                self._proc = None

    def begin(self, figures: dict, out_dir: str | os.PathLike) -> None:
        """Hand `figures` (name -> Figure, to `out_dir/name.png` and `.pdf`) to the helper and return at
        once: the helper draws them while this process goes on. `write` draws whatever the helper has
        not (all of them when there is no helper)."""
        self._hand_over(self._add(figures, out_dir))
        if self._handed and self._blas_limit is None:
            self._blas_limit = _leave_a_core()

    def write(self, figures: dict, out_dir: str | os.PathLike) -> list[str]:
        """Write every figure of `figures` (name -> Figure) as `out_dir/name.png` and `.pdf`, and finish
        every figure `begin` handed over; returns the paths of all of them.

        When the helper has drawn everything handed to it so far, it also takes the first of these
        figures alone (this process's first figure costs half as much again as the helper's, which
        has loaded its fonts and backends already); otherwise the two draw from both ends."""
        idle = bool(self._handed) and self._drawn() >= self._handed
        first = self._add(figures, out_dir)
        if len(self._items) > 1:
            self._hand_over(first)
        items, claims = self._items, self._claims
        left_to_helper = first if idle and first in self._handed else None
        try:
            mine = set()
            for i in reversed(range(len(items))):  # from the last, while the helper works from the first
                if i != left_to_helper and claim(claims, i):
                    write_png_and_pdf(*items[i])
                    mine.add(i)
            done = self._finished()
            self.helped += len(done)
            for i in sorted(set(range(len(items))) - mine - done):  # claimed by a helper that did not finish
                write_png_and_pdf(*items[i])
        finally:
            self.close()
        return [stem + ext for _, stem in items for ext in (".png", ".pdf")]

    def _add(self, figures: dict, out_dir) -> int:
        """Add `figures` to this report's; returns the index of the first of them."""
        if self._claims is None:
            self._claims = tempfile.mkdtemp(prefix="gflow-figures-")
        first = len(self._items)
        self._items += [(fig, os.path.join(os.fspath(out_dir), name)) for name, fig in figures.items()]
        return first

    def _hand_over(self, first: int) -> None:
        """Pickle to the helper every figure from index `first` on that pickles (the others are drawn
        here); a helper that is gone, or cannot take them, is stopped and this process draws them."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        import matplotlib

        jobs = []
        for i, (fig, stem) in enumerate(self._items[first:], start=first):
            try:
                jobs.append((i, pickle.dumps((fig, stem))))
            except (pickle.PicklingError, TypeError, AttributeError):
                continue
        rc = {k: v for k, v in matplotlib.rcParams.items() if k not in PARENT_ONLY_RC}
        try:
            proc.stdin.write(pickle.dumps((jobs, rc, self._claims)))
            proc.stdin.flush()
        except (OSError, pickle.PicklingError, TypeError, AttributeError):
            self._stop_helper()
            return
        self._handed.update(i for i, _ in jobs)

    def _read_output(self, timeout: float) -> bool:
        """Read what the helper has printed, waiting up to `timeout` seconds for more; False at its end."""
        fd = self._proc.stdout.fileno()
        if not select.select([fd], [], [], timeout)[0]:
            return True
        chunk = os.read(fd, 65536)
        self._output += chunk
        return bool(chunk)

    def _drawn(self) -> set[int]:
        """The figures the helper has reported drawn so far (without waiting)."""
        if self._proc is not None:
            try:
                while self._read_output(0.0) and select.select([self._proc.stdout.fileno()], [], [], 0.0)[0]:
                    pass
            except OSError:
                pass
        return _reported(self._output)

    def _finished(self) -> set[int]:
        """The figures the helper drew (none unless it ends with `ok`); the helper is done after."""
        proc = self._proc
        if proc is None or not self._handed:
            self._stop_helper()
            return set()
        try:
            proc.stdin.close()  # no more figures: the helper finishes what it claimed, says `ok` and exits
            deadline = time.monotonic() + HELPER_TIMEOUT
            while not self._output.endswith(b"ok\n") and time.monotonic() < deadline:
                if not self._read_output(max(deadline - time.monotonic(), 0.0)):
                    break
        except OSError:
            pass
        ok = self._output.endswith(b"ok\n")
        self._stop_helper()
        return _reported(self._output) if ok else set()

    def _stop_helper(self) -> None:
        if self._blas_limit is not None:
            self._blas_limit.restore_original_limits()
            self._blas_limit = None
        proc, self._proc = self._proc, None
        if proc is not None:  # (not communicate(): it flushes stdin, which may be closed already, and
            proc.kill()       # would turn the Ctrl-C that brought us here into "flush of closed file")
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None and not pipe.closed:
                    try:
                        pipe.close()
                    except OSError:
                        pass

    def close(self) -> None:
        """Stop the helper and forget the figures begun and not written (a run that failed before its
        report), or those written."""
        self._stop_helper()
        if self._claims is not None:
            shutil.rmtree(self._claims, ignore_errors=True)
        self._items, self._claims, self._handed, self._output = [], None, set(), b""

    def __enter__(self) -> FigureWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _reported(output: bytes) -> set[int]:
    """The indices in the helper's `done <index>` lines (complete lines only)."""
    lines = output.decode(errors="replace").split("\n")[:-1]
    return {int(line.split()[1]) for line in lines if line.startswith("done ") and line.split()[1].isdigit()}


def _leave_a_core():
    """Hold this process's BLAS (OpenBLAS, MKL) to one thread fewer than the cores while the helper
    draws, and return the limit to restore (`None` without `threadpoolctl` or with one core). Its
    threads wait for each other by spinning: with the helper on one of two cores, the demo's plateau
    linearisations (an `eigh` per Newton iteration) took 5.0 s instead of 3.4 s (2026-12-03)."""
    cores = os.cpu_count() or 1
    if cores < 2:
        return None
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=cores - 1, user_api="blas")


def claim(claims: str, index: int) -> bool:
    """Claim figure `index` for this process: True for the first of the two processes that asks (an
    exclusive create is atomic on a local file system)."""
    try:
        os.close(os.open(os.path.join(claims, str(index)), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def _serve() -> None:
    import matplotlib

    stream = sys.stdin.buffer
    while True:  # one batch per `begin` or `write` of the parent, until it closes the pipe
        try:
            batch = pickle.load(stream)  # written by FigureWriter in the parent, through a private pipe
        except EOFError:
            break
        jobs, rc, claims = batch
        with matplotlib.rc_context(rc):
            for index, figure in jobs:
                if claim(claims, index):
                    write_png_and_pdf(*pickle.loads(figure))
                    sys.stdout.write(f"done {index}\n")
                    sys.stdout.flush()  # the parent reads it to see whether this process is idle
    sys.stdout.write("ok\n")
    sys.stdout.flush()
    os._exit(0)  # every file is written and renamed: skip the interpreter's teardown, which the parent waits for


if __name__ == "__main__":
    _serve()
