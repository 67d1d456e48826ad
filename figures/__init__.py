"""Shared plotting for the norga project: style, convergence plots, accuracy plots, tables.

The package reads the files written by ``experiments/rates.py`` and ``experiments/cl.py``
(see :mod:`figures.runs`) and never imports ``moe_theory`` or ``cl``.

Modules: :mod:`figures.style` (look, colours, ``save_figure``), :mod:`figures.runs` (readers),
:mod:`figures.convergence`, :mod:`figures.accuracy`, :mod:`figures.tables` (paper tables with
the published numbers of ``figures/data/published.json``), :mod:`figures.report` (everything
under a results root; used by ``experiments/figures.py``) and :mod:`figures.examples`
(synthetic example runs, stamped as such).
"""

from norga.extras import require_extra

require_extra("figures", "figures", ("matplotlib",))

from figures.accuracy import (  # noqa: E402
    plot_accuracy_curves,
    plot_accuracy_matrix,
    plot_activation_ablation,
    plot_expert_frequency,
    plot_fa_bars,
)
from figures.convergence import (  # noqa: E402
    convergence_figures_for_run,
    plot_convergence,
    plot_loss_parts,
)
from figures.report import render_results, write_readme_images  # noqa: E402
from figures.runs import (  # noqa: E402
    CLRun,
    RatesRun,
    RunFormatError,
    find_runs,
    read_cl_run,
    read_rates_run,
)
from figures.style import figure_style, save_figure  # noqa: E402
from figures.tables import write_tables  # noqa: E402

__all__ = [
    "CLRun",
    "RatesRun",
    "RunFormatError",
    "convergence_figures_for_run",
    "figure_style",
    "find_runs",
    "plot_accuracy_curves",
    "plot_accuracy_matrix",
    "plot_activation_ablation",
    "plot_convergence",
    "plot_expert_frequency",
    "plot_fa_bars",
    "plot_loss_parts",
    "read_cl_run",
    "read_rates_run",
    "render_results",
    "save_figure",
    "write_readme_images",
    "write_tables",
]
