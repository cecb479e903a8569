"""`FigureWriter`: a report's figures drawn partly in a helper process, with the same files either way."""

import os
import time

import matplotlib.image
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import Formatter, FuncFormatter

from gflow.plot import FigureWriter
from gflow.plot._writer import write_png_and_pdf


def small_figure(seed: int) -> Figure:
    fig = Figure(figsize=(3, 2), layout="constrained")
    ax = fig.add_subplot()
    x = np.logspace(-1, 3, 50)
    ax.loglog(x, 1 + np.random.default_rng(seed).random(50), label=r"$\sigma_1$")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def pixels(path) -> np.ndarray:
    return matplotlib.image.imread(path)


class PlainFormatter(Formatter):
    """A tick formatter only this test module defines: a figure using it pickles by reference to a
    module the helper process cannot import, so the helper claims it and then fails on it."""

    def __call__(self, x, pos=None):
        return f"{x:g}"


def record_draws_here(monkeypatch) -> list[str]:
    """The stems this process draws from now on (the helper's draws are not seen: another process)."""
    import gflow.plot._writer as writer_module

    drawn_here = []
    draw = writer_module.write_png_and_pdf

    def draw_here(fig, stem):
        drawn_here.append(str(stem))
        return draw(fig, stem)

    monkeypatch.setattr(writer_module, "write_png_and_pdf", draw_here)
    return drawn_here


def test_the_helper_shares_the_figures_and_draws_the_same_files_as_this_process(tmp_path, monkeypatch):
    drawn_here = record_draws_here(monkeypatch)
    n = 8
    figures = {f"f{i}": small_figure(i) for i in range(n)}
    with FigureWriter() as writer:
        time.sleep(3.0)  # the helper has imported matplotlib and waits, as it does after a run's flow
        paths = writer.write(figures, tmp_path / "shared")
    if (os.cpu_count() or 1) > 1:
        assert writer.helped >= 1  # it takes figures from the first while this process takes them from the last
        assert str(tmp_path / "shared" / "f0") not in drawn_here
    assert writer.helped + len(drawn_here) == n  # each figure drawn once
    assert sorted(os.path.basename(p) for p in paths) == sorted(f"f{i}.{e}" for i in range(n) for e in ("png", "pdf"))
    for i in range(n):
        write_png_and_pdf(small_figure(i), tmp_path / "here" / f"f{i}")
        shared, here = (pixels(tmp_path / where / f"f{i}.png") for where in ("shared", "here"))
        np.testing.assert_array_equal(shared, here)
        assert os.path.getsize(tmp_path / "shared" / f"f{i}.pdf") > 1000


def test_a_figure_the_helper_claims_and_fails_is_drawn_here(tmp_path):
    failing = small_figure(0)
    failing.axes[0].xaxis.set_major_formatter(PlainFormatter())
    with FigureWriter() as writer:
        time.sleep(3.0)
        writer.write({"a": failing, "b": small_figure(1), "c": small_figure(2)}, tmp_path)
    assert writer.helped == 0  # the helper died on "a", the first it claims; its report is discarded
    assert all(os.path.getsize(tmp_path / f"{n}.{e}") > 1000 for n in "abc" for e in ("png", "pdf"))
    assert list(tmp_path.iterdir()) and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_figures_the_helper_cannot_take_are_drawn_here(tmp_path, monkeypatch):
    drawn_here = record_draws_here(monkeypatch)
    unpicklable = small_figure(1)
    unpicklable.axes[0].xaxis.set_major_formatter(FuncFormatter(lambda x, pos: f"{x:g}"))  # a lambda: no pickle
    with FigureWriter() as writer:
        time.sleep(3.0)
        writer.write({"a": small_figure(0), "b": unpicklable, "c": small_figure(2)}, tmp_path)
    assert str(tmp_path / "b") in drawn_here
    assert writer.helped + len(drawn_here) == 3
    assert all(os.path.getsize(tmp_path / f"{n}.{e}") > 0 for n in "abc" for e in ("png", "pdf"))


def test_a_dead_helper_changes_nothing_but_who_draws(tmp_path):
    with FigureWriter() as writer:
        if writer._proc is not None:
            writer._proc.kill()
            writer._proc.wait()
        writer.write({"a": small_figure(0), "b": small_figure(1)}, tmp_path)
    assert writer.helped == 0
    assert all(os.path.getsize(tmp_path / f"{n}.{e}") > 0 for n in "ab" for e in ("png", "pdf"))


def test_an_unused_helper_is_stopped():
    writer = FigureWriter()
    proc = writer._proc
    writer.close()
    assert proc is None or proc.poll() is not None


def test_figures_begun_early_are_drawn_by_the_helper_while_this_process_computes(tmp_path, monkeypatch):
    """`begin` hands figures over and returns; the helper draws them meanwhile (this process's BLAS one
    thread fewer, restored after). A helper that has finished them also takes the next figure alone."""
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    drawn_here = record_draws_here(monkeypatch)
    before = blas_threads()
    with FigureWriter() as writer:
        writer.begin({"f0": small_figure(0), "f1": small_figure(1)}, tmp_path / "shared")
        helped = (os.cpu_count() or 1) > 1 and writer._proc is not None
        if helped:
            assert all(n == (os.cpu_count() or 1) - 1 for n in blas_threads()) or not before
            deadline = time.monotonic() + 60.0
            while writer._drawn() != {0, 1} and time.monotonic() < deadline:  # this process "computes"
                time.sleep(0.05)
        paths = writer.write({"f2": small_figure(2)}, tmp_path / "shared")
    assert blas_threads() == before
    if helped:
        assert writer.helped == 3 and drawn_here == []
    assert writer.helped + len(drawn_here) == 3
    assert sorted(os.path.basename(p) for p in paths) == sorted(f"f{i}.{e}" for i in range(3) for e in ("png", "pdf"))
    for i in range(3):
        write_png_and_pdf(small_figure(i), tmp_path / "here" / f"f{i}")
        shared, here = (pixels(tmp_path / where / f"f{i}.png") for where in ("shared", "here"))
        np.testing.assert_array_equal(shared, here)
