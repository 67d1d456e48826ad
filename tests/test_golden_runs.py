"""Golden runs: small deterministic runs whose every number is pinned exactly.

A change that moves any number here must update the pin IN THE SAME COMMIT and say in the
commit message why the numbers moved (a bug fix, a protocol change, a new default). A pin that
moves for no stated reason is a wiring bug: the formula-level tests do not see, for example, a
class mask that is off by one task, skipped prompt momentum or a changed LM damping schedule,
but each of those moves these numbers.

To update: run this file, copy the ``got`` values of the failing assertion into the dict below.

* ``CL``: the quick synthetic runs (``experiments/cl.py --dataset synthetic --quick``) of NoRGa
  and HiDe-Prompt at the quick preset's seed, one torch thread: the accuracy matrix and the TII
  accuracy matrix (percent; ``None`` above the diagonal), row ``t`` = after task ``t``.
* ``THEORY``: small E1 (exact-specified) and E2 (over-specified) fits through
  :func:`moe_theory.rates.fit_task` (seed 1, 2 restarts, n = 1000): the Voronoi loss ``L_1``,
  the RSS and the LM iteration count per replicate. Counts are compared exactly, losses to
  ``1e-9`` relative (BLAS summation order).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

N = None  # a task not yet learned

CL: dict[str, dict[str, list[list[float | None]]]] = {
    "norga": {
        "accuracy": [[100.0, N, N, N, N],
                     [83.75, 92.5, N, N, N],
                     [87.5, 91.25, 86.25, N, N],
                     [88.75, 90.0, 87.5, 93.75, N],
                     [87.5, 81.25, 90.0, 95.0, 95.0]],
        "tii": [[100.0, N, N, N, N],
                [83.75, 95.0, N, N, N],
                [87.5, 95.0, 87.5, N, N],
                [88.75, 93.75, 87.5, 93.75, N],
                [87.5, 82.5, 90.0, 95.0, 95.0]],
    },
    "hide": {
        "accuracy": [[100.0, N, N, N, N],
                     [85.0, 92.5, N, N, N],
                     [87.5, 92.5, 86.25, N, N],
                     [88.75, 91.25, 86.25, 93.75, N],
                     [87.5, 81.25, 90.0, 95.0, 95.0]],
        "tii": [[100.0, N, N, N, N],
                [83.75, 95.0, N, N, N],
                [87.5, 95.0, 87.5, N, N],
                [88.75, 93.75, 87.5, 93.75, N],
                [87.5, 82.5, 90.0, 95.0, 95.0]],
    },
}

# (setting, gate): per replicate (voronoi_loss, rss, n_iter)
THEORY: dict[tuple[str, str], list[tuple[float, float, int]]] = {
    ("exact", "norga"): [(0.16032723794947668, 10.760676901726267, 6),
                         (0.5470941693292253, 9.888782127726925, 6),
                         (1.1084259273529709, 10.16523968560085, 6)],
    ("exact", "linear"): [(1.136133054889094, 10.746485934514462, 14),
                          (0.45690538834692374, 9.908105140113161, 15),
                          (3.4182556258535035, 10.147087763738915, 7)],
    ("over", "norga"): [(1.271977179163081, 9.522498640832897, 82),
                        (1.3157753255677207, 9.676765659071675, 91)],
}
THEORY_N = 1000


def _as_pins(matrix: np.ndarray) -> list[list[float | None]]:
    return [[None if math.isnan(v) else float(v) for v in row] for row in matrix]


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("method", sorted(CL))
def test_quick_synthetic_run_is_pinned(method: str, tmp_path) -> None:
    from cl.config import resolve_config
    from cl.engine import run_experiment

    result = run_experiment(resolve_config("synthetic", method, quick=True), tmp_path / "run")
    got = {"accuracy": _as_pins(result.accuracy), "tii": _as_pins(result.tii)}
    assert got == CL[method], f"{method}: got {got}"
    # the summary numbers are those of the pinned matrices
    final = [v for v in CL[method]["accuracy"][-1] if v is not None]
    assert result.metrics["FA"] == pytest.approx(float(np.mean(final)), abs=1e-12)
    tii_final = [v for v in CL[method]["tii"][-1] if v is not None]
    assert result.metrics["TII_accuracy"] == pytest.approx(float(np.mean(tii_final)), abs=1e-12)


@pytest.mark.parametrize("setting, gate", sorted(THEORY))
def test_small_theory_fit_is_pinned(setting: str, gate: str) -> None:
    from moe_theory.rates import RateConfig, fit_task

    pins = THEORY[(setting, gate)]
    config = RateConfig(settings=(setting,), restarts=2, seed=1)
    records = fit_task(config, setting, gate, THEORY_N, tuple(range(len(pins))), "")
    got = [(r["voronoi_loss"], r["rss"], r["n_iter"]) for r in records]
    assert [g[2] for g in got] == [p[2] for p in pins], f"iteration counts: got {got}"
    assert all(r["converged"] for r in records)
    for (loss, rss, _), (pin_loss, pin_rss, _) in zip(got, pins, strict=True):
        assert loss == pytest.approx(pin_loss, rel=1e-9), f"got {got}"
        assert rss == pytest.approx(pin_rss, rel=1e-9), f"got {got}"
