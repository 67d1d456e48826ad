"""Configuration of an E5 run: :class:`NearConfig`, its presets and the columns of
``near_fits.csv``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from moe_theory.gates import ACTIVATIONS, GATES, Gate, GateKind
from moe_theory.model import EXPERTS
from moe_theory.near import mechanism as near
from moe_theory.varpro import check_solver_options
from norga.choices import check_choice
from norga.schemas import NEAR_FIT_COLUMNS as NEAR_FIT_COLUMNS  # re-exported

KINDS: tuple[str, ...] = ("fixed", "schedule")
# near_fits.csv: NEAR_FIT_COLUMNS, defined in norga.schemas with the other theory CSV schemas.

# NearConfig fields a fit block depends on (the rest select blocks or analyse them); with the
# block's kind, value, t, gate, n and replicates they key its cache entry.
NEAR_FIT_FIELDS: tuple[str, ...] = ("activation", "expert", "split", "t0", "schedule_n0", "seed",
                                    "restarts", "max_iter", "tol", "init_scale", "noise_sd",
                                    "solver", "global_starts")
# Sizes per preset of experiments/rates.py (the mechanism table is the same for every preset).
# ``full`` reaches n = 1e6 (13 n, 3 per decade) with R = 16 up to 1e5 and R = 8 above, and runs
# the schedules on n <= 1e5 only: with the full LM one capped linear fit costs about 42 s of CPU
# at n = 1e6 (2000 evaluations, 21 ms each). As defined the preset takes 7.6 CPU-minutes with
# the default solver and 27.1 with --solver lm (benchmarks/results/presets.json).
NEAR_PRESETS: dict[str, dict[str, object]] = {
    "quick": {"n_min": 100, "n_max": 10_000, "num_n": 7, "replicates": 8, "restarts": 1},
    "paper": {"n_min": 100, "n_max": 100_000, "num_n": 9, "replicates": 16, "restarts": 1},
    "full": {"n_min": 100, "n_max": 1_000_000, "num_n": 13, "replicates": 16, "restarts": 1,
             "reduced_above": 100_000, "reduced_replicates": 8, "schedule_n_max": 100_000},
}


@dataclass(frozen=True)
class NearConfig:
    """Everything that defines an E5 run (saved as ``near_config.json``).

    Attributes
    ----------
    gates, activation, expert, split:
        Gates fitted; sigma of NoRGa; prompt expert type; which expert coordinates the two
        true atoms split (``both``: ``a* +/- 0.5`` and ``b* +/- 0.5``).
    t_values:
        Separations of the fixed-``t`` truths.
    gammas, t0, schedule_n0:
        Schedules ``t_n = t0 (n / schedule_n0)^-gamma``, run at the ``n >= schedule_n0``. The
        defaults include schedules inside the first-order expansion's range for each gate
        (``gamma p_1 <= 0.8``: 0.05 for linear gating, p_1 ~ 8; 0.1 and 0.2 for NoRGa, p_1 ~ 4)
        and two outside it for linear gating (0.1 at the edge, 0.25), reported as such.
    n_values, replicates, restarts, seed, max_iter, tol, init_scale:
        Sample sizes, fits per n (see ``reduced_above``), starts per fit, the one seed, fitter
        cap and tolerance, and the sd of the near-truth start noise. The cap is 2000 Jacobian
        evaluations (E1-E4: 400): near-degenerate linear fits need 500-2500 and, stopped at
        400, stay near their start, which makes L_1 look smaller than it is.
    noise_sd:
        Noise sd (default 0.001: at 0.1 the parametric regime of linear gating lies beyond
        n = 1e9 at t = 0.4, see near.json).
    eps:
        Target loss of the implied sample sizes ``n*``.
    bases:
        Base atoms of the mechanism table.
    block:
        Replicates per task (load balancing only).
    reduced_above, reduced_replicates:
        At every ``n > reduced_above`` only replicates ``0 .. reduced_replicates - 1`` are
        fitted (the first ones of the full count, so a larger run reuses them); None: all
        ``replicates`` at every n.
    schedule_n_max:
        Largest n of the schedules (None: every ``n >= schedule_n0`` of the grid).
    solver, global_starts:
        The fitter (``auto``, the default, ``lm`` or ``varpro``: :mod:`moe_theory.varpro`;
        ``auto`` is variable projection here, with the full LM for fits it leaves
        unconverged) and the global
        mode (``k > 0``: ``k`` starts spread over the gate box instead of near-truth starts).
    """

    gates: tuple[GateKind, ...] = ("norga", "linear")
    activation: str = "tanh"
    expert: str = "affine"
    split: str = "both"
    t_values: tuple[float, ...] = (0.8, 0.4, 0.2)
    gammas: tuple[float, ...] = (0.05, 0.1, 0.2, 0.25)
    t0: float = 0.8
    schedule_n0: int = 1000
    n_values: tuple[int, ...] = (100, 215, 464, 1000, 2154, 4642, 10000)
    replicates: int = 8
    restarts: int = 1
    seed: int = 1
    max_iter: int = 2000
    tol: float = 1e-12
    init_scale: float = 0.1
    noise_sd: float = 0.001
    eps: float = 0.1
    bases: tuple[str, ...] = tuple(near.BASE_ATOMS)
    block: int = 4
    preset: str | None = None
    reduced_above: int | None = None
    reduced_replicates: int | None = None
    schedule_n_max: int | None = None
    solver: str = "auto"
    global_starts: int = 0

    def __post_init__(self) -> None:
        for g in self.gates:
            check_choice("gate", g, GATES)
        check_solver_options(self.solver, self.global_starts,
                             tanh_experts=self.expert == "tanh")
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("expert", self.expert, EXPERTS)
        check_choice("split", self.split, near.SPLITS)
        for b in self.bases:
            check_choice("base atom", b, tuple(near.BASE_ATOMS))
        if not self.t_values or any(not 0 < t <= 1 for t in self.t_values):
            raise ValueError(f"t values must be in (0, 1]; got {list(self.t_values)}")
        if any(not 0 < g < 1 for g in self.gammas):
            raise ValueError(f"gamma values must be in (0, 1); got {list(self.gammas)}")
        if not self.n_values or min(self.n_values) < 2:
            raise ValueError(f"n values must be non-empty and >= 2; got {list(self.n_values)}")
        for name in ("replicates", "restarts", "max_iter", "block"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0; got {self.seed}")
        if not (self.noise_sd > 0 and self.eps > 0 and self.t0 > 0 and self.init_scale >= 0):
            raise ValueError("need noise_sd > 0, eps > 0, t0 > 0 and init_scale >= 0")
        if (self.reduced_above is None) != (self.reduced_replicates is None):
            raise ValueError("reduced_above and reduced_replicates go together; got "
                             f"{self.reduced_above} and {self.reduced_replicates}")
        if self.reduced_replicates is not None and not (
                1 <= self.reduced_replicates <= self.replicates):
            raise ValueError(f"reduced_replicates must be in 1..replicates={self.replicates}; "
                             f"got {self.reduced_replicates}")
        if self.gammas and len(self.schedule_values()) < 3:
            raise ValueError(
                f"the schedules need >= 3 values of n in [schedule_n0={self.schedule_n0}, "
                f"schedule_n_max={self.schedule_n_max}]; got n values {list(self.n_values)}"
            )

    def schedule_values(self) -> tuple[int, ...]:
        top = self.schedule_n_max
        return tuple(n for n in self.n_values
                     if n >= self.schedule_n0 and (top is None or n <= top))

    def replicates_at(self, n: int) -> int:
        """Fits per (kind, value, gate) at sample size ``n``."""
        if self.reduced_above is not None and n > self.reduced_above:
            return self.reduced_replicates  # type: ignore[return-value]
        return self.replicates

    def t_of(self, kind: str, value: float, n: int) -> float:
        """Separation of the truth of a (kind, value) group at sample size ``n``."""
        if kind == "fixed":
            return float(value)
        return float(self.t0 * (n / self.schedule_n0) ** (-value))

    def groups(self) -> list[tuple[str, float]]:
        return [("fixed", t) for t in self.t_values] + [("schedule", g) for g in self.gammas]

    def gate(self, name: GateKind) -> Gate:
        return Gate(name, self.activation)  # type: ignore[arg-type]

    def truth(self, gate: GateKind, t: float):
        return near.near_truth(t, self.gate(gate), self.expert,  # type: ignore[arg-type]
                               split=self.split)

    def to_dict(self) -> dict[str, object]:
        return {"kind": "near", **asdict(self)}
