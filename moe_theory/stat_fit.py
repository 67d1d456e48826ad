"""The one convention every statistical fit of :mod:`moe_theory` follows (:class:`StatFit`).

A *statistical fit* is an estimate with a confidence interval: the rate fit of
:func:`moe_theory.inference.fit_rate` (:class:`~moe_theory.inference.RateFit`), the bootstrap
slope of :func:`moe_theory.inference.bootstrap_slope` (:class:`~moe_theory.inference.SlopeFit`)
and the eigenvalue exponents of E5 (:class:`moe_theory.near.mechanism.ExponentFit`,
:class:`moe_theory.near.cluster_law.Exponent`). Each one offers, in the spirit of statsmodels'
results:

* ``params``: the named estimates, headline first (the one ``conf_int`` is about);
* ``level``: the confidence level the fit was made at;
* ``conf_int(alpha=None)``: the interval ``(lo, hi)`` of the headline estimate, at ``level``
  by default and at level ``1 - alpha`` otherwise; a ``ValueError`` naming ``alpha`` where the
  method cannot give that level;
* ``summary()``: a short readable text.

A fit that is written to a result file serialises itself with ``to_dict()`` (the exact keys of
that file). Not fits in this sense: :class:`moe_theory.fit_result.FitResult` (what the optimiser
returns, a batch of parameter vectors ``theta`` without intervals) and
:class:`moe_theory.fit_record.FitRecord` (one row of ``fits.csv``).

This module also holds the two small pieces the fits share: :func:`check_alpha` and
:func:`ols_slope_interval`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np
from scipy import stats

__all__ = ["StatFit", "check_alpha", "ols_slope_interval"]


@runtime_checkable
class StatFit(Protocol):
    """An estimate with a confidence interval (see the module docstring)."""

    @property
    def params(self) -> Mapping[str, float]:
        """Named estimates; the first is the one :meth:`conf_int` covers."""
        ...

    @property
    def level(self) -> float:
        """Confidence level of :meth:`conf_int` without ``alpha``."""
        ...

    def conf_int(self, alpha: float | None = None) -> tuple[float, float]:
        """Interval of the first estimate of :attr:`params` at ``level`` or ``1 - alpha``."""
        ...

    def summary(self) -> str:
        """A short readable text: estimate, interval and how it was computed."""
        ...


def check_alpha(alpha: float) -> float:
    """``alpha`` as a float when it lies in (0, 1); otherwise a ``ValueError`` naming it."""
    if not 0.0 < alpha < 1.0:  # (a NaN fails too)
        raise ValueError(f"alpha must be in (0, 1); got {alpha}")
    return float(alpha)


def ols_slope_interval(
    x: np.ndarray, y: np.ndarray, slope: float, intercept: float, level: float,
    alpha: float | None = None,
) -> tuple[float, float]:
    """t interval of the slope of the least-squares line ``y = intercept + slope * x``.

    The residual standard deviation ``s = sqrt(RSS / (m - 2))`` and the reference t(m - 2) over
    the ``m`` points give ``slope +/- t_q s / sqrt(sum (x - mean x)^2)``, with ``q = 0.5 +
    level / 2`` (``alpha=None``) or ``q = 1 - alpha / 2``.

    Raises
    ------
    ValueError
        ``alpha`` outside (0, 1), or fewer than three points (no degrees of freedom).
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3:
        raise ValueError(f"need at least 3 points for a slope interval; got {len(x)}")
    q = 0.5 + level / 2 if alpha is None else 1.0 - check_alpha(alpha) / 2
    resid = y - (intercept + slope * x)
    s = float(np.sqrt(resid @ resid / (len(x) - 2)))
    half = stats.t.ppf(q, len(x) - 2) * s / np.sqrt(((x - x.mean()) ** 2).sum())
    return (float(slope - half), float(slope + half))


class PowerLawFit:
    """The fit part of a power law ``log y = log_c + p log x`` fitted by least squares: the
    :class:`StatFit` members for a frozen dataclass with the fields ``p``, ``log_c``,
    ``log_lambda`` (the fitted ``log y``) and ``level``, which says where its ``log x`` are
    (:meth:`_log_x`). Used by the exponents of E5's mechanism table and of its cluster-size law.
    """

    p: float
    log_c: float
    log_lambda: tuple[float, ...]
    level: float

    def _log_x(self) -> np.ndarray:
        raise NotImplementedError

    @property
    def params(self) -> dict[str, float]:
        """``{"p": ..., "log_c": ...}``."""
        return {"p": self.p, "log_c": self.log_c}

    def conf_int(self, alpha: float | None = None) -> tuple[float, float]:
        """Interval of ``p`` at ``level`` (``alpha=None``) or ``1 - alpha``: t(m - 2) from the
        residuals (:func:`ols_slope_interval`)."""
        return ols_slope_interval(self._log_x(), np.array(self.log_lambda), self.p, self.log_c,
                                  self.level, alpha)
