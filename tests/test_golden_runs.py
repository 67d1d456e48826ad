"""Golden runs: small deterministic runs whose numbers are pinned (exactly where they are counts).

A change that moves any number here must update the pin IN THE SAME COMMIT and say in the
commit message why the numbers moved (a bug fix, a protocol change, a new default). A pin that
moves for no stated reason is a wiring bug: the formula-level tests do not see, for example, a
class mask that is off by one task, skipped prompt momentum or a changed LM damping schedule,
but each of those moves these numbers.

To update: run this file, copy the ``got`` values of the failing assertion into the dict below.

* ``CL``: the quick synthetic runs (``experiments/cl.py --dataset synthetic --quick``) of NoRGa
  and HiDe-Prompt at the quick preset's seed, one torch thread: the accuracy matrix and the TII
  accuracy matrix (percent; ``None`` above the diagonal), row ``t`` = after task ``t``, exactly;
  and, from ``log.jsonl``, the last-epoch loss of the prompt training (``wtp``) and of the head
  alignment (``tap``) per task, to ``1e-5`` relative. The losses see wiring changes that move
  no prediction of this easy benchmark (prompt momentum ignored during training, for example).
* ``THEORY``: small E1 (exact-specified) and E2 (over-specified) fits through
  :func:`moe_theory.rates.sweep.fit_task` (seed 1, 2 restarts, n = 1000): the Voronoi loss ``L_1``,
  the RSS and the LM iteration count per replicate. Counts are compared exactly, losses to
  ``1e-9`` relative (BLAS summation order).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

N = None  # a task not yet learned

CL: dict[str, dict[str, list]] = {
    "norga": {
        "accuracy": [[100.0, N, N, N, N],
                     [83.75, 92.5, N, N, N],
                     [87.5, 91.25, 87.5, N, N],
                     [88.75, 90.0, 88.75, 93.75, N],
                     [87.5, 81.25, 90.0, 95.0, 95.0]],
        "tii": [[100.0, N, N, N, N],
                [83.75, 95.0, N, N, N],
                [87.5, 95.0, 87.5, N, N],
                [88.75, 93.75, 88.75, 93.75, N],
                [87.5, 82.5, 90.0, 95.0, 95.0]],
        "wtp_loss": [0.03384577259421349, 0.07794668227434158, 0.03999512456357479,
                     0.012374851293861866, 0.058319945633411405],
        "tap_loss": [0.036811018362641335, 0.02086518006399274, 0.014484149869531393,
                     0.012631235644221306],
    },
    "hide": {
        "accuracy": [[100.0, N, N, N, N],
                     [85.0, 92.5, N, N, N],
                     [87.5, 92.5, 87.5, N, N],
                     [88.75, 91.25, 87.5, 93.75, N],
                     [87.5, 81.25, 90.0, 95.0, 95.0]],
        "tii": [[100.0, N, N, N, N],
                [83.75, 95.0, N, N, N],
                [87.5, 95.0, 87.5, N, N],
                [88.75, 93.75, 88.75, 93.75, N],
                [87.5, 82.5, 90.0, 95.0, 95.0]],
        "wtp_loss": [0.05090138353407383, 0.11953506469726563, 0.08261466249823571,
                     0.014919882267713546, 0.06310155615210533],
        "tap_loss": [0.04818798415362835, 0.029744358267635107, 0.020761953045924503,
                     0.016091343946754932],
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


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(CL))
def test_quick_synthetic_run_is_pinned(method: str, quick_synthetic_cl_run) -> None:
    result, run_dir = quick_synthetic_cl_run(method)  # one torch thread; shared with other tests
    pins = CL[method]
    got = {"accuracy": _as_pins(result.accuracy), "tii": _as_pins(result.tii)}
    assert got == {k: pins[k] for k in got}, f"{method}: got {got}"
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    for phase in ("wtp", "tap"):
        last = {r["task"]: r["loss"] for r in records if r.get("phase") == phase}
        losses = [last[t] for t in sorted(last)]
        assert losses == pytest.approx(pins[f"{phase}_loss"], rel=1e-5), f"{phase}: {losses}"
    # the summary numbers are those of the pinned matrices
    final = [v for v in CL[method]["accuracy"][-1] if v is not None]
    assert result.metrics["FA"] == pytest.approx(float(np.mean(final)), abs=1e-12)
    tii_final = [v for v in CL[method]["tii"][-1] if v is not None]
    assert result.metrics["TII_accuracy"] == pytest.approx(float(np.mean(tii_final)), abs=1e-12)


@pytest.mark.parametrize("setting, gate", sorted(THEORY))
def test_small_theory_fit_is_pinned(setting: str, gate: str) -> None:
    from moe_theory.rates.sweep import RateConfig, fit_task

    pins = THEORY[(setting, gate)]
    config = RateConfig(settings=(setting,), restarts=2, seed=1)
    records = fit_task(config, setting, gate, THEORY_N, tuple(range(len(pins))), "")
    got = [(r.voronoi_loss, r.rss, r.n_iter) for r in records]
    assert [g[2] for g in got] == [p[2] for p in pins], f"iteration counts: got {got}"
    assert all(r.converged for r in records)
    for (loss, rss, _), (pin_loss, pin_rss, _) in zip(got, pins, strict=True):
        assert loss == pytest.approx(pin_loss, rel=1e-9), f"got {got}"
        assert rss == pytest.approx(pin_rss, rel=1e-9), f"got {got}"
