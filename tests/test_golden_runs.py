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
                     [76.25, 91.25, N, N, N],
                     [85.0, 90.0, 85.0, N, N],
                     [86.25, 90.0, 86.25, 92.5, N],
                     [87.5, 83.75, 90.0, 95.0, 95.0]],
        "tii": [[100.0, N, N, N, N],
                [75.0, 93.75, N, N, N],
                [85.0, 93.75, 85.0, N, N],
                [86.25, 93.75, 86.25, 92.5, N],
                [87.5, 86.25, 90.0, 95.0, 95.0]],
        "wtp_loss": [0.03384575620293617, 0.07794680893421173, 0.03999474383890629,
                     0.012374751642346382, 0.05831652507185936],
        "tap_loss": [0.03681105375289917, 0.020865133963525295, 0.01448407443240285,
                     0.012631340185180306],
    },
    "hide": {
        "accuracy": [[100.0, N, N, N, N],
                     [78.75, 91.25, N, N, N],
                     [85.0, 91.25, 85.0, N, N],
                     [86.25, 91.25, 85.0, 92.5, N],
                     [87.5, 85.0, 90.0, 95.0, 95.0]],
        "tii": [[100.0, N, N, N, N],
                [75.0, 93.75, N, N, N],
                [85.0, 93.75, 85.0, N, N],
                [86.25, 93.75, 86.25, 92.5, N],
                [87.5, 86.25, 90.0, 95.0, 95.0]],
        "wtp_loss": [0.050901397690176965, 0.11953507959842682, 0.0826146736741066,
                     0.014919890090823174, 0.06310159042477607],
        "tap_loss": [0.048187997192144394, 0.029744377825409174, 0.020761966084440548,
                     0.01609136362094432],
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
