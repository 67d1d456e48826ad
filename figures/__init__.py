"""Shared plotting for the norga project: style, convergence plots, accuracy plots, tables.

The package reads the files written by ``experiments/rates.py`` and ``experiments/cl.py``
(see :mod:`figures.runs`) and never imports ``moe_theory`` or ``cl``.
"""

from figures.convergence import (
    convergence_figures_for_run,
    plot_convergence,
    plot_loss_parts,
)
from figures.runs import (
    CLRun,
    RatesRun,
    RunFormatError,
    find_runs,
    read_cl_run,
    read_rates_run,
)
from figures.style import figure_style, save_figure

__all__ = [
    "CLRun",
    "RatesRun",
    "RunFormatError",
    "convergence_figures_for_run",
    "figure_style",
    "find_runs",
    "plot_convergence",
    "plot_loss_parts",
    "read_cl_run",
    "read_rates_run",
    "save_figure",
]
