"""The column lists of the theory simulator's CSV files, written once.

:mod:`moe_theory` writes these files and :mod:`figures` reads (and, for its synthetic examples,
writes) them; the two may not import each other, so the schemas live here, below both. The
order of each tuple is the column order on disk.
"""

from __future__ import annotations

#: The losses of one fit, in the order both ``fits.csv`` and ``near_fits.csv`` hold them.
FIT_LOSS_COLUMNS: tuple[str, ...] = (
    "voronoi_loss", "voronoi_loss_r", "loss_mass", "loss_beta1", "loss_eta", "l2_error", "rss",
)

#: ``fits.csv`` of a rate sweep (E1-E4): one row per fit.
FIT_COLUMNS: tuple[str, ...] = (
    "setting", "gate", "activation", "expert", "n", "replicate", *FIT_LOSS_COLUMNS,
    "converged", "status", "at_bound", "n_iter", "restarts", "cell_sizes",
)

#: ``timing.csv`` of a rate sweep: the wall-clock time of each fit (kept out of ``fits.csv`` so
#: that file does not depend on the number of workers).
TIMING_COLUMNS: tuple[str, ...] = ("setting", "gate", "n", "replicate", "seconds")

#: ``near_fits.csv`` of an E5 run: one row per fit.
NEAR_FIT_COLUMNS: tuple[str, ...] = (
    "kind", "t", "gamma", "gate", "activation", "expert", "split", "n", "replicate",
    *FIT_LOSS_COLUMNS, "status", "converged", "at_bound", "n_iter", "gradient", "cell_sizes",
)
