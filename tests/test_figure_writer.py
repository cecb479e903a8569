"""`FigureWriter`: a report's figures drawn partly in a helper process, with the same files either way."""

import os

import matplotlib.image
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

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


def test_the_helper_draws_the_same_files_as_this_process(tmp_path):
    figures = {f"f{i}": small_figure(i) for i in range(3)}
    with FigureWriter() as writer:
        paths = writer.write(figures, tmp_path / "helped")
    assert writer.helped == (1 if (os.cpu_count() or 1) > 1 else 0)  # every second figure: f1
    assert sorted(os.path.basename(p) for p in paths) == sorted(f"f{i}.{e}" for i in range(3) for e in ("png", "pdf"))
    for i in range(3):
        write_png_and_pdf(small_figure(i), tmp_path / "here" / f"f{i}")
        helped, here = (pixels(tmp_path / where / f"f{i}.png") for where in ("helped", "here"))
        np.testing.assert_array_equal(helped, here)
        assert os.path.getsize(tmp_path / "helped" / f"f{i}.pdf") > 1000


def test_figures_the_helper_cannot_take_are_drawn_here(tmp_path):
    unpicklable = small_figure(1)
    unpicklable.axes[0].xaxis.set_major_formatter(FuncFormatter(lambda x, pos: f"{x:g}"))  # a lambda: no pickle
    with FigureWriter() as writer:
        writer.write({"a": small_figure(0), "b": unpicklable}, tmp_path)
    assert writer.helped == 0
    assert all(os.path.getsize(tmp_path / f"{n}.{e}") > 0 for n in "ab" for e in ("png", "pdf"))


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
