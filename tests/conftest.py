"""Fixtures shared by the tests.

Apart from resetting the packages' log levels, nothing here is ``autouse``: a test module opts
in by name, e.g. ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``, so the other
test modules are unaffected.
"""

from __future__ import annotations

import logging

import pytest

_PACKAGES = ("cl", "moe_theory", "figures", "norga")


@pytest.fixture(autouse=True)
def _package_log_levels():
    """A command's main() run in-process sets its packages' log levels (norga.cli
    configure_logging); put them back so that a later test's caplog sees what it expects."""
    before = {name: logging.getLogger(name).level for name in _PACKAGES}
    yield
    for name, level in before.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors run faster on one thread; restore the setting for other test modules."""
    import torch  # here, not at the top: modules that do not ask for this need not load torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def quick_synthetic_cl_run(tmp_path_factory):
    """``run(method) -> (RunResult, run directory)``: the quick synthetic run, once per session.

    The golden-run pins (``test_golden_runs.py``) and the byte-identity check
    (``test_cl_byte_identity.py``) read the same run, so the suite pays for it once. One torch
    thread (as the pins were made); the caller must not write into the directory.
    """
    runs: dict[str, tuple] = {}

    def run(method: str) -> tuple:
        if method not in runs:
            import torch

            from cl.config import resolve_config
            from cl.run.engine import run_experiment

            out = tmp_path_factory.mktemp(f"quick_synthetic_{method}") / "run"
            before = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                # every checkpoint kept, as when the byte-identity pins were taken (the default
                # keeps the last one only)
                cfg = resolve_config("synthetic", method, quick=True,
                                     overrides={"keep_checkpoints": "all"})
                result = run_experiment(cfg, out)
            finally:
                torch.set_num_threads(before)
            runs[method] = (result, out)
        return runs[method]

    return run


@pytest.fixture
def count_fits(monkeypatch) -> list[int]:
    """Counts the fits the sweeps run: one per computed (not cached) block of replicates and
    restart, whichever solver fits it (``moe_theory.estimate.fit_restarts`` runs the function
    ``_solver_function`` picks once per restart)."""
    from moe_theory import estimate

    calls = [0]
    choose = estimate._solver_function

    def counting_choice(solver, structure):
        run = choose(solver, structure)

        def counted(*args, **kwargs):
            calls[0] += 1
            return run(*args, **kwargs)

        return counted

    monkeypatch.setattr(estimate, "_solver_function", counting_choice)
    return calls
