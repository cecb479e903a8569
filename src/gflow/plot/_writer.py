"""Writing figures to disk: PNG and PDF side by side, a report's figures shared with a helper process.

Drawing a figure is single-threaded Python (matplotlib): the demo's three figures take about 1.9 s of
a warm run while the second core idles. `FigureWriter` starts a helper process when a run begins; it
imports matplotlib only (not gflow or JAX) while the flow runs, then waits. When the report's figures
are ready they are pickled to the helper, which draws them from the first while this process draws
them from the last; each figure is claimed before it is drawn (a file created exclusively in a
private folder), so each is drawn once, and the two meet wherever their figures' costs put them (the
demo's overview alone costs as much as its other two). If the helper cannot start, dies, takes too
long or a figure does not pickle, this process draws what the helper did not finish: the files are
the same either way.

Run as a script, this file is the helper: it reads one pickled `([(index, pickled (figure, stem)), ...],
rc, claims)` from stdin, and for each figure it can claim in `claims` writes `stem.png` and `stem.pdf`
under the parent's matplotlib settings `rc` and prints `done <index>`; then `ok`.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import tempfile

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
    stopped: `with FigureWriter() as writer: ...; writer.write(figures, out_dir)`."""

    def __init__(self, helper: bool = True):
        self._proc = self._handed = None
        self.helped = 0
        """How many figures the helper drew (0 when this process drew them all)."""
        if helper and (os.cpu_count() or 1) > 1:
            try:
                self._proc = subprocess.Popen(
                    [sys.executable, os.path.abspath(__file__)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL, start_new_session=True)  # Ctrl-C stops the run, not the helper
            except OSError:
                self._proc = None

    def write(self, figures: dict, out_dir: str | os.PathLike) -> list[str]:
        """Write every figure of `figures` (name -> Figure) as `out_dir/name.png` and `.pdf`; returns
        the paths."""
        items = [(fig, os.path.join(os.fspath(out_dir), name)) for name, fig in figures.items()]
        claims = tempfile.mkdtemp(prefix="gflow-figures-")
        try:
            handed = self._hand_over(items, claims) if len(items) > 1 else False
            mine = set()
            for i in reversed(range(len(items))):  # from the last, while the helper works from the first
                if claim(claims, i):
                    write_png_and_pdf(*items[i])
                    mine.add(i)
            done = self._finished() if handed else set()
            self.helped += len(done)
            for i in sorted(set(range(len(items))) - mine - done):  # claimed by a helper that did not finish
                write_png_and_pdf(*items[i])
        finally:
            shutil.rmtree(claims, ignore_errors=True)
        return [stem + ext for _, stem in items for ext in (".png", ".pdf")]

    def _hand_over(self, items: list, claims: str) -> bool:
        """Pickle to the helper every figure that pickles (the others are drawn here); False when
        there is no helper to take them."""
        proc, self._proc = self._proc, None  # one batch per helper
        if proc is None or proc.poll() is not None:
            return False
        import matplotlib

        jobs = []
        for i, (fig, stem) in enumerate(items):
            try:
                jobs.append((i, pickle.dumps((fig, stem))))
            except (pickle.PicklingError, TypeError, AttributeError):
                continue
        rc = {k: v for k, v in matplotlib.rcParams.items() if k not in PARENT_ONLY_RC}
        try:
            proc.stdin.write(pickle.dumps((jobs, rc, claims)))
            proc.stdin.close()
        except (OSError, pickle.PicklingError, TypeError, AttributeError):
            proc.kill()
            proc.wait()
            return False
        self._handed = proc
        return True

    def _finished(self) -> set[int]:
        """The indices the helper reports drawn (none unless it ends with `ok`)."""
        proc, self._handed = self._handed, None
        try:
            proc.wait(timeout=HELPER_TIMEOUT)  # its output is a few short lines: the pipe cannot fill
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        lines = proc.stdout.read().decode(errors="replace").splitlines()
        proc.stdout.close()
        if proc.returncode != 0 or lines[-1:] != ["ok"]:
            return set()
        return {int(line.split()[1]) for line in lines[:-1] if line.startswith("done ") and line.split()[1].isdigit()}

    def close(self) -> None:
        """Stop the helper if it was not used (a run that failed, or drew one figure)."""
        for proc in (self._proc, self._handed):
            if proc is not None:  # (not communicate(): it flushes stdin, which may be closed already, and
                proc.kill()       # would turn the Ctrl-C that brought us here into "flush of closed file")
                proc.wait()
                for pipe in (proc.stdin, proc.stdout):
                    if pipe is not None and not pipe.closed:
                        try:
                            pipe.close()
                        except OSError:
                            pass
        self._proc = self._handed = None

    def __enter__(self) -> FigureWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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

    job = sys.stdin.buffer.read()
    if not job:  # the parent closed the pipe without a figure
        return
    jobs, rc, claims = pickle.loads(job)  # written by FigureWriter in the parent, through a private pipe
    with matplotlib.rc_context(rc):
        for index, figure in jobs:
            if claim(claims, index):
                write_png_and_pdf(*pickle.loads(figure))
                sys.stdout.write(f"done {index}\n")
    sys.stdout.write("ok\n")


if __name__ == "__main__":
    _serve()
