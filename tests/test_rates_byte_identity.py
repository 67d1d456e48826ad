"""summary.json, summary.txt and fits.csv of a fixed synthetic rates result, against references.

The reference files in ``tests/golden/rates_synthetic/`` were written by the code before the
rate results became typed records (issue 17, commit ``bbe714d``): a refactor of the analysis or
of the report must not move the published output. The records are made by hand (no fitting, so
no numba dependence) and cover every branch of the report: the exact setting (Fisher check,
AICc comparison with 5 values of n), the over-specified settings (loss parts line, no
guaranteed rate), capped/stalled/at-bound fits, an n grid with too few n above ``fit_n_min``
and the E4 mechanism block.

The summary's slopes, AICc values and Fisher constants come out of weighted least squares and
eigenvalues, i.e. out of BLAS / LAPACK, whose kernels (and so the last bits) differ between
CPUs. So the files are compared as structure: every key, string, count and integer exactly,
every float to ``FLOAT_REL`` (spread measured between the AVX-512 path that wrote the
references, AVX2 and the older kernels of ``.ci/run_emulated_cpu``: 1.6e-12; WLS weights
without the variance move the slopes by 2e-4). On one machine the bytes are identical; that
is checked by the rerun tests of the rates CLI, not here.

To regenerate (only for a deliberate change of the output, stated in the commit message):
``PYTHONPATH=. python tests/test_rates_byte_identity.py``.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pytest
from numeric_text import json_mismatches, text_mismatches

from moe_theory.fit_record import FitRecord
from moe_theory.io import dumps_json, fits_csv_text
from moe_theory.rates.sweep import RateConfig, RateResult, mechanism_report

GOLDEN = Path(__file__).parent / "golden" / "rates_synthetic"
N_VALUES = (100, 200, 400, 800, 1600)
REPLICATES = 8  # >= WLS_MIN_REPLICATES: the weighted slope fit
STATUSES = ("converged", "converged", "capped", "stalled")
FLOAT_REL = 1e-9  # relative tolerance of every float in the files (see the module docstring)


def _loss(setting: str, gate: str, n: int, rep: int, scale: float) -> float:
    slope = {"exact": -0.5, "over": -0.2, "over-tanh": -0.45}[setting]
    wiggle = 1.0 + 0.3 * math.sin(1.7 * rep + 0.01 * n + len(gate))
    return scale * n**slope * wiggle


@functools.lru_cache(maxsize=1)
def _mechanism() -> dict[str, object]:
    """The E4 report of the reference sweep (it depends only on the activation and noise sd)."""
    return mechanism_report(RateConfig(settings=("mechanism",), activation="tanh", noise_sd=0.1))


def reference_result(fit_n_min: int = 100) -> RateResult:
    """A sweep of hand-made records over every fit setting and both gates, plus E4."""
    config = RateConfig(settings=("exact", "over", "over-tanh", "mechanism"),
                        gates=("norga", "linear"), n_values=N_VALUES, replicates=REPLICATES,
                        seed=5, fit_n_min=fit_n_min)
    records = []
    for setting in config.fit_settings:
        for gate in config.gates:
            for n in N_VALUES:
                for rep in range(REPLICATES):
                    status = STATUSES[(rep + n // 100) % len(STATUSES)]
                    records.append(FitRecord.from_row({
                        "setting": setting, "gate": gate, "activation": "tanh",
                        "expert": "tanh" if setting == "over-tanh" else "affine",
                        "n": n, "replicate": rep,
                        "voronoi_loss": _loss(setting, gate, n, rep, 20.0),
                        "voronoi_loss_r": _loss(setting, gate, n, rep, 30.0),
                        "loss_mass": _loss(setting, gate, n, rep, 5.0),
                        "loss_beta1": _loss(setting, gate, n, rep + 1, 7.0),
                        "loss_eta": _loss(setting, gate, n, rep + 2, 9.0),
                        "l2_error": _loss("exact", gate, n, rep + 3, 2.0),
                        "rss": 0.01 * n, "converged": status == "converged",
                        "status": status, "at_bound": rep in (3, 6) and setting != "exact",
                        "n_iter": 10 + rep, "restarts": 1, "cell_sizes": "1;2",
                        "seconds": 0.5,
                    }))
    return RateResult(config=config, records=records, mechanism=_mechanism())


# fit_n_min: every n enters the fits / n >= 200 / too few n above it, so every n with a note
CASES = {"all_n": 100, "subset": 200, "few_n": 1000}


def outputs(result: RateResult) -> dict[str, str]:
    return {"summary.json": dumps_json(result.summary_dict()),
            "summary.txt": result.summary() + "\n"}


def mismatches(name: str, got: str, want: str) -> list[str]:
    """How ``got`` differs from the reference ``want`` of file ``name`` (empty: they match)."""
    if name.endswith(".json"):
        return json_mismatches(json.loads(got), json.loads(want), rel=FLOAT_REL)
    return text_mismatches(got, want, rel=FLOAT_REL)


@pytest.mark.float_pin
def test_fits_csv_matches_the_reference():
    got = fits_csv_text(reference_result().records)
    differ = mismatches("fits.csv", got, (GOLDEN / "fits.csv").read_text(encoding="utf-8"))
    assert not differ, f"fits.csv differs from the reference: {differ[:10]}"


@pytest.mark.float_pin
@pytest.mark.parametrize("case", sorted(CASES))
def test_outputs_match_the_reference(case):
    got = outputs(reference_result(CASES[case]))
    for name, text in got.items():
        want = (GOLDEN / f"{case}.{name}").read_text(encoding="utf-8")
        differ = mismatches(name, text, want)
        assert not differ, f"{case}.{name} differs from the reference: {differ[:10]}"


if __name__ == "__main__":  # regenerate the reference files
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for case, fit_n_min in CASES.items():
        for name, text in outputs(reference_result(fit_n_min)).items():
            (GOLDEN / f"{case}.{name}").write_bytes(text.encode("utf-8"))
    (GOLDEN / "fits.csv").write_bytes(fits_csv_text(reference_result().records).encode("utf-8"))
