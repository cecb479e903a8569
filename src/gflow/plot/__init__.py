"""Figures (matplotlib, PNG and PDF)."""

from ._compare import comparison_figure as comparison_figure
from ._figures import attention_figure as attention_figure
from ._figures import hessian_figure as hessian_figure
from ._figures import overview_figure as overview_figure
from ._figures import save_figure as save_figure
from ._lags import lag_attention_maps as lag_attention_maps
from ._lags import lag_figure as lag_figure
from ._phase import PHASE_COLUMNS as PHASE_COLUMNS
from ._phase import phase_diagram as phase_diagram
from ._timelines import loss_remaining as loss_remaining
from ._timelines import timelines_figure as timelines_figure
from ._writer import FigureWriter as FigureWriter
