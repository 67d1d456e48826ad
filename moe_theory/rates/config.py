"""Configuration of a rate sweep: :class:`RateConfig`, the presets, the n grid, the columns of
``fits.csv``/``timing.csv`` and what each setting predicts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from moe_theory.gates import ACTIVATIONS, GATES, GateKind
from moe_theory.model import EXPERTS, PrefixMoE
from moe_theory.settings import FIT_SETTINGS, SETTINGS, get_setting
from moe_theory.varpro import check_solver_options
from norga.choices import check_choice
from norga.schemas import FIT_COLUMNS as FIT_COLUMNS  # re-exported
from norga.schemas import TIMING_COLUMNS as TIMING_COLUMNS  # re-exported

# fits.csv and timing.csv: the columns are defined in norga.schemas (figures reads them too).
# What every record of fit_task holds; a cached block with other keys is refused.
RECORD_KEYS: frozenset[str] = frozenset(FIT_COLUMNS) | {"seconds"}
# The Fisher check of docs/theory-background.md#fisher-check: the level is consistent with C/sqrt(n)
# when the 95% CI of mean L_1 / (C/sqrt(n)) at the largest n overlaps this band.
FISHER_BAND: tuple[float, float] = (0.7, 1.3)

PRESETS: dict[str, dict[str, object]] = {
    # E1 + E4 in well under two minutes on two cores.
    "quick": {
        "settings": ("exact", "mechanism"),
        "n_min": 100,
        "n_max": 100_000,
        "num_n": 7,
        "replicates": 12,
        "restarts": 1,
    },
    # The publication convergence figure: E1 + E4, 20 values of n, 40 replicates, 3 restarts.
    "paper": {
        "settings": ("exact", "mechanism"),
        "n_min": 100,
        "n_max": 100_000,
        "num_n": 20,
        "replicates": 40,
        "restarts": 3,
    },
    # Every experiment at the publication size: about 11 min on two cores with the default
    # solver, 12 with solver "lm" (benchmarks/results/presets.json), less on a cluster.
    "full": {
        "settings": ("exact", "over", "over-tanh", "mechanism"),
        "n_min": 100,
        "n_max": 100_000,
        "num_n": 20,
        "replicates": 40,
        "restarts": 3,
    },
}

# What each setting predicts for the slope of L_1 (None: no rate guaranteed).
EXPECTED_SLOPE = {"exact": -0.5, "over": None, "over-tanh": -0.5}


def n_grid(n_min: int, n_max: int, num: int) -> tuple[int, ...]:
    """``num`` log-spaced integers from ``n_min`` to ``n_max`` (duplicates removed)."""
    if n_min < 2 or n_max < n_min or num < 1:
        raise ValueError(f"need 2 <= n_min <= n_max and num >= 1; got {n_min}, {n_max}, {num}")
    if num == 1:
        return (int(n_min),)
    grid = np.unique(np.round(np.logspace(np.log10(n_min), np.log10(n_max), num)).astype(int))
    return tuple(int(v) for v in grid)


@dataclass(frozen=True)
class RateConfig:
    """Everything that defines a sweep (saved as ``config.json``).

    Attributes
    ----------
    settings:
        Experiments among ``exact``, ``over``, ``over-tanh``, ``mechanism``.
    gates:
        Gates to fit, among ``linear`` and ``norga``.
    activation:
        sigma of NoRGa.
    expert:
        Prompt expert override for ``exact``/``over`` (``None``: each setting's own).
    n_values:
        Sample sizes.
    replicates, restarts:
        Replicates per n and restarts per fit.
    seed:
        The one seed every random draw derives from.
    fit_n_min:
        Smallest n that enters the slope fits (pre-asymptotic points are excluded).
    max_iter, tol, noise_sd, init_scale, r:
        Fitter cap and tolerance, noise sd, near-truth start noise, exponent of ``L_{1,r}``.
    block:
        Replicates per task (load balancing only; results do not depend on it).
    global_starts:
        0: near-truth starts (``restarts`` per fit). ``k > 0``: global mode, ``k`` starts
        spread over the gate-parameter box ``[-5, 5]`` per fit instead
        (:func:`moe_theory.varpro.global_starts`), the lowest RSS kept.
    solver:
        The fitter: ``lm`` (Levenberg-Marquardt on every parameter), ``varpro`` (variable
        projection, affine experts only) or ``auto`` (the default: varpro for two or more
        affine atoms, i.e. E2, refitted by lm where it does not converge; lm for E1's single
        atom and E3's tanh experts); see :mod:`moe_theory.varpro`.
    """

    settings: tuple[str, ...] = ("exact", "mechanism")
    gates: tuple[GateKind, ...] = ("norga", "linear")
    activation: str = "tanh"
    expert: str | None = None
    n_values: tuple[int, ...] = n_grid(100, 100_000, 7)
    replicates: int = 12
    restarts: int = 1
    seed: int = 1
    fit_n_min: int = 1000
    max_iter: int = 400
    tol: float = 1e-12
    noise_sd: float = 0.1
    init_scale: float = 0.1
    r: float = 2.0
    block: int = 6
    preset: str | None = None
    solver: str = "auto"
    global_starts: int = 0

    def __post_init__(self) -> None:
        for s in self.settings:
            check_choice("setting", s, SETTINGS)
        for g in self.gates:
            check_choice("gate", g, GATES)
        check_solver_options(self.solver, self.global_starts,
                             tanh_experts="over-tanh" in self.settings or self.expert == "tanh")
        check_choice("activation", self.activation, ACTIVATIONS)
        if self.expert is not None:
            check_choice("expert", self.expert, EXPERTS)
            if self.expert == "affine" and "over-tanh" in self.settings:
                raise ValueError("expert 'affine' contradicts setting 'over-tanh' (tanh experts)")
        for name in ("replicates", "restarts", "max_iter", "block"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if not self.n_values or min(self.n_values) < 2:
            raise ValueError(f"n_values must be non-empty and >= 2; got {self.n_values}")
        if self.fit_settings and self.fit_n_min > max(self.n_values):
            raise ValueError(
                f"fit_n_min={self.fit_n_min} is above every n of the grid (largest "
                f"{max(self.n_values)}); no fit would enter the slopes"
            )
        if self.fit_settings and len(set(self.n_values)) < 3:
            raise ValueError(f"the rate fits need at least 3 distinct n (two leave no degrees of "
                             f"freedom for the slope CI); got n_values {self.n_values}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0; got {self.seed}")
        if not (self.noise_sd > 0 and self.init_scale >= 0 and self.tol > 0 and self.r >= 1):
            raise ValueError("need noise_sd > 0, init_scale >= 0, tol > 0 and r >= 1")

    @property
    def fit_settings(self) -> tuple[str, ...]:
        return tuple(s for s in self.settings if s in FIT_SETTINGS)

    def truth(self, setting: str, gate: GateKind) -> PrefixMoE:
        """The true model of ``setting`` under ``gate`` (with the expert override)."""
        base = get_setting(setting)
        expert = self.expert if (self.expert and setting != "over-tanh") else base.expert
        return replace(base.truth(gate, self.activation), expert=expert)

    def to_dict(self) -> dict[str, object]:
        return {"kind": "rates", **asdict(self)}
