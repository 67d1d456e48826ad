"""The compiled (numba) normal equations of the batched fitter against independent references.

References: the numpy path of ``moe_theory.estimate`` (``_Problem.evaluate``, backend
``"numpy"``), and for one case a finite-difference Jacobian of
``moe_theory.model.textbook_regression`` (all ``N`` pretrained experts, no collapsing, ``scipy``
softmax).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from moe_theory import estimate, kernels
from moe_theory.estimate import (
    LeastSquaresMoE,
    _Problem,
    fit_batched,
    near_truth_starts,
    resolve_backend,
)
from moe_theory.gates import Gate
from moe_theory.model import (
    PrefixMoE,
    Pretrained,
    collapse_pretrained,
    n_params,
    regression,
    textbook_regression,
)
from moe_theory.settings import THETA_BOUND, default_truth
from moe_theory.simulate import simulate

GATES = [Gate("linear"), Gate("norga", "tanh", 0.7, 1.3), Gate("norga", "sigmoid", 1.2, 0.8),
         Gate("norga", "gelu", 0.9, 1.1)]


def random_structure(gate: Gate, expert: str, d: int, L: int, seed: int) -> PrefixMoE:
    """Random pretrained experts (N = 2) in dimension d, L placeholder prompt atoms."""
    rng = np.random.default_rng(seed)
    pre = Pretrained(B=rng.normal(size=(2, d, d)), c=rng.normal(size=2),
                     a=rng.normal(size=(2, d)), b=rng.normal(size=2))
    zeros = np.zeros(n_params(L, d))
    return PrefixMoE(pre, np.zeros(L), np.zeros((L, d)), np.zeros((L, d)), np.zeros(L),
                     gate=gate, expert=expert).with_theta(zeros)


def random_data(d: int, R: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, size=(R, n, d)), rng.normal(size=(R, n))


def assert_close(actual: np.ndarray, desired: np.ndarray, rtol: float) -> None:
    """Elementwise, relative to the largest entry (off-diagonal sums can nearly cancel)."""
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * np.abs(desired).max())


@pytest.mark.parametrize("L", [1, 2])
@pytest.mark.parametrize("d", [1, 2])
@pytest.mark.parametrize("expert", ["affine", "tanh"])
@pytest.mark.parametrize("gate", GATES, ids=lambda g: g.label)
def test_normal_equations_match_the_numpy_path(gate, expert, d, L):
    structure = random_structure(gate, expert, d, L, seed=d + 10 * L)
    X, Y = random_data(d, R=3, n=150, seed=L)  # 150: two full blocks and a partial one
    theta = np.random.default_rng(7).normal(size=(2, n_params(L, d)))
    rows = np.array([2, 0])
    ref = _Problem(X, Y, structure, 64, "numpy").evaluate(theta, rows, jacobian=True)
    fast = _Problem(X, Y, structure, 64, "numba")
    rss, jtj, jtr = fast.evaluate(theta, rows, jacobian=True)
    assert_close(rss, ref[0], 1e-10)
    assert_close(jtj, ref[1], 1e-10)
    assert_close(jtr, ref[2], 1e-10)
    np.testing.assert_array_equal(jtj, np.swapaxes(jtj, 1, 2))
    # the value-only kernel gives the same RSS bit for bit (the LM gain ratio mixes both)
    value_only, none1, none2 = fast.evaluate(theta, rows, jacobian=False)
    assert none1 is None and none2 is None
    np.testing.assert_array_equal(value_only, rss)


def test_normal_equations_match_a_finite_difference_jacobian():
    structure = random_structure(Gate("norga", "tanh", 0.8, 1.5), "tanh", d=2, L=2, seed=3)
    X, Y = random_data(2, R=1, n=70, seed=5)
    theta = np.random.default_rng(11).normal(size=n_params(2, 2))
    g = textbook_regression(X[0], theta, structure)
    np.testing.assert_allclose(regression(X[0], structure.with_theta(theta)), g, rtol=1e-12)
    h = 1e-6
    J = np.empty((X.shape[1], theta.size))
    for j in range(theta.size):
        step = np.zeros_like(theta)
        step[j] = h
        J[:, j] = (textbook_regression(X[0], theta + step, structure)
                   - textbook_regression(X[0], theta - step, structure)) / (2 * h)
    r = Y[0] - g
    rss, jtj, jtr = kernels.evaluate(np.swapaxes(X, 1, 2), Y, *_pretrained_terms(X, structure),
                                     np.array([0]), theta[None], structure, jacobian=True)
    assert rss[0] == pytest.approx(r @ r, rel=1e-12)
    assert_close(jtj[0], J.T @ J, 1e-7)
    assert_close(jtr[0], J.T @ r, 1e-7)


def _pretrained_terms(X: np.ndarray, structure: PrefixMoE) -> tuple[np.ndarray, np.ndarray]:
    return collapse_pretrained(*structure.pretrained.logits_and_outputs(X))


def test_a_replicate_gives_the_same_bits_alone_in_a_batch_and_on_two_threads():
    structure = random_structure(Gate("norga", "tanh"), "affine", d=1, L=2, seed=1)
    X, Y = random_data(1, R=5, n=300, seed=2)
    XT = np.swapaxes(X, 1, 2)
    lse, mean_out = _pretrained_terms(X, structure)
    theta = np.random.default_rng(3).normal(size=(5, n_params(2, 1)))
    every = np.arange(5)
    batch = kernels.evaluate(XT, Y, lse, mean_out, every, theta, structure, True)
    two = kernels.evaluate(XT, Y, lse, mean_out, every, theta, structure, True, threads=2)
    sub = np.array([4, 3, 1])
    subset = kernels.evaluate(XT, Y, lse, mean_out, sub, theta[sub], structure, True, threads=2)
    for k in range(3):
        np.testing.assert_array_equal(two[k], batch[k])
        np.testing.assert_array_equal(subset[k], batch[k][sub])
    for r in (0, 3):
        alone = kernels.evaluate(XT, Y, lse, mean_out, np.array([r]), theta[r : r + 1],
                                 structure, True)
        for k in range(3):
            np.testing.assert_array_equal(alone[k][0], batch[k][r])
    # and through the whole fitter (an over-specified fit: many rejected steps)
    truth = default_truth(Gate("linear"))
    over = truth.with_theta(np.zeros(8))
    Xs, Ys = simulate(truth, 400, list(range(4)), seed=4, setting="kernel-test")
    rng = np.random.default_rng(4)
    starts = np.stack([near_truth_starts(truth, 2, 1, rng, bound=THETA_BOUND)[0]
                       for _ in range(4)])
    kw = {"bound": THETA_BOUND, "max_iter": 60, "backend": "numba"}
    one = fit_batched(Xs, Ys, starts, over, threads=1, **kw)
    both = fit_batched(Xs, Ys, starts, over, threads=2, **kw)
    alone = fit_batched(Xs[2:3], Ys[2:3], starts[2:3], over, **kw)
    for name in ("theta", "rss", "n_iter", "converged"):
        np.testing.assert_array_equal(getattr(one, name), getattr(both, name))
        np.testing.assert_array_equal(getattr(alone, name)[0], getattr(one, name)[2])


@pytest.mark.parametrize("gate", ["linear", "norga"])
def test_fits_reach_the_same_minima_as_the_numpy_backend(gate):
    truth = default_truth(Gate(gate))
    X, Y = simulate(truth, 500, list(range(4)), seed=3, setting="kernel-test")
    rng = np.random.default_rng(3)
    starts = np.stack([near_truth_starts(truth, 1, 1, rng)[0] for _ in range(4)])
    ref = fit_batched(X, Y, starts, truth, backend="numpy")
    fast = fit_batched(X, Y, starts, truth, backend="numba")
    assert ref.converged.all()
    np.testing.assert_array_equal(fast.converged, ref.converged)
    np.testing.assert_allclose(fast.rss, ref.rss, rtol=1e-8)
    np.testing.assert_allclose(fast.theta, ref.theta, atol=1e-6)


def test_bounded_over_specified_fits_reach_the_same_minima_as_the_numpy_backend():
    truth = default_truth(Gate("norga"), "tanh")  # E3-like: L = 1 true atom, L' = 2 fitted
    structure = truth.with_theta(np.zeros(n_params(2, 1)))
    X, Y = simulate(truth, 400, list(range(3)), seed=6, setting="kernel-test")
    rng = np.random.default_rng(6)
    starts = np.stack([near_truth_starts(truth, 2, 1, rng, bound=THETA_BOUND)[0]
                       for _ in range(3)])
    ref = fit_batched(X, Y, starts, structure, bound=THETA_BOUND, backend="numpy")
    fast = fit_batched(X, Y, starts, structure, bound=THETA_BOUND, backend="numba")
    np.testing.assert_array_equal(fast.converged, ref.converged)
    np.testing.assert_allclose(fast.rss, ref.rss, rtol=1e-8)
    assert np.all(np.abs(fast.theta) <= THETA_BOUND)


@pytest.mark.parametrize("beta0", [(800.0, 799.5), (-800.0, -790.0), (800.0, -800.0)])
def test_extreme_logits_are_finite_and_match_the_numpy_overflow_handling(beta0):
    structure = random_structure(Gate("norga", "tanh"), "tanh", d=1, L=2, seed=4)
    X, Y = random_data(1, R=2, n=100, seed=8)
    theta = np.random.default_rng(9).normal(size=(2, n_params(2, 1)))
    theta[:, 0], theta[:, 4] = beta0  # the atoms' beta0
    rows = np.arange(2)
    ref = _Problem(X, Y, structure, 64, "numpy").evaluate(theta, rows, jacobian=True)
    fast = _Problem(X, Y, structure, 64, "numba").evaluate(theta, rows, jacobian=True)
    for mine, theirs in zip(fast, ref, strict=True):
        assert np.isfinite(mine).all()
        assert_close(mine, theirs, 1e-10)


def test_backend_choice_falls_back_and_reports(monkeypatch):
    structure = default_truth(Gate("norga"))
    assert kernels.kernel_supports(structure)
    assert resolve_backend("auto", structure) == "numba"
    assert resolve_backend("numpy", structure) == "numpy"
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("cuda", structure)
    # an activation the kernels do not implement: auto uses numpy, numba says why not
    odd = Gate("norga")
    object.__setattr__(odd, "activation", "softplus")
    odd_structure = PrefixMoE(structure.pretrained, structure.beta0, structure.beta1,
                              structure.a, structure.b, gate=odd)
    assert not kernels.kernel_supports(odd_structure)
    assert resolve_backend("auto", odd_structure) == "numpy"
    with pytest.raises(ValueError, match="do not implement"):
        resolve_backend("numba", odd_structure)
    # numba missing
    monkeypatch.setattr(estimate, "_load_kernels", lambda: None)
    assert resolve_backend("auto", structure) == "numpy"
    with pytest.raises(ImportError, match="numba"):
        resolve_backend("numba", structure)


def test_the_kernels_are_told_the_model_and_keep_their_codes_private():
    """Callers pass the PrefixMoE (its gate a Gate); the integer gate and expert codes are the
    kernel module's own, and the model reaches them unchanged (sigmoid gate, tanh experts:
    a swapped code would compute another model)."""
    assert [n for n in vars(kernels) if n.isupper() and not n.startswith("_")] == ["BLOCK"]
    structure = random_structure(Gate("norga", "sigmoid", 1.2, 0.8), "tanh", d=2, L=1, seed=4)
    X, Y = random_data(2, R=3, n=80, seed=5)
    XT = np.ascontiguousarray(np.swapaxes(X, 1, 2))
    lse, mean_out = _pretrained_terms(X, structure)
    theta = np.random.default_rng(6).normal(scale=0.5, size=(3, n_params(1, 2)))
    rows = np.arange(3)
    fast = kernels.accumulate(XT, Y, lse, mean_out, rows, theta, structure, True)
    reference = _Problem(X, Y, structure, 64, "numpy").evaluate(theta, rows, jacobian=True)
    for mine, theirs in zip(fast, reference, strict=True):
        assert_close(mine, theirs, 1e-10)
    odd = Gate("norga")
    object.__setattr__(odd, "activation", "softplus")
    odd_structure = PrefixMoE(structure.pretrained, structure.beta0, structure.beta1,
                              structure.a, structure.b, gate=odd, expert="tanh")
    with pytest.raises(ValueError, match="do not implement"):
        kernels.accumulate(XT, Y, lse, mean_out, rows, theta, odd_structure, True)
    assert not hasattr(kernels, "kernel_codes")


def test_estimator_passes_backend_and_threads_on(monkeypatch):
    seen, runs = [], []
    real_problem, real_lm = estimate._Problem, estimate._levenberg_marquardt

    def spy_problem(*args):
        problem = real_problem(*args)
        seen.append((problem.backend, problem.threads))
        return problem

    def spy_lm(problem, *args, **kwargs):
        runs.append((problem.backend, problem.threads))
        return real_lm(problem, *args, **kwargs)

    monkeypatch.setattr(estimate, "_Problem", spy_problem)
    monkeypatch.setattr(estimate, "_levenberg_marquardt", spy_lm)
    truth = default_truth(Gate("linear"))
    X, Y = simulate(truth, 200, [0], seed=1, setting="kernel-test")
    LeastSquaresMoE("linear", truth=truth, n_init=2, random_state=0, backend="numpy",
                    threads=2).fit(X[0], Y[0])
    # the data are prepared once; both starts run on them with the options passed on
    assert seen == [("numpy", 2)]
    assert runs == [("numpy", 2), ("numpy", 2)]


@pytest.mark.slow
def test_importing_the_package_neither_imports_numba_nor_compiles():
    code = ("import sys, moe_theory.estimate, moe_theory.rates.sweep; "
            "sys.exit('numba' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


_CACHE_PROBE = """
import json, numba, numpy as np
from moe_theory import kernels
from moe_theory.gates import Gate
from moe_theory.settings import default_truth

def layer():
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel code has run in this process
        return None

XT = np.random.default_rng(0).uniform(-1, 1, (3, 1, 70))
Y, lse, mean_out = np.random.default_rng(1).normal(size=(3, 3, 70))
args = (XT, Y, lse, mean_out, np.arange(3), np.full((3, 4), 0.3), default_truth(Gate("norga")),
        True)
serial = kernels.evaluate(*args, threads=1)
after_serial = layer()
parallel = kernels.evaluate(*args, threads=2)
print(json.dumps({
    "same": all(np.array_equal(a, b) for a, b in zip(serial, parallel)),
    "layer": [after_serial, layer()],
    "stats": {role: [sum(d.stats.cache_hits.values()), sum(d.stats.cache_misses.values()),
                     d._cache._cache_file._index_path]
              for role, d in (("serial", kernels._serial), ("parallel", kernels._parallel))},
}))
"""


@pytest.mark.slow
def test_serial_and_parallel_drivers_each_load_their_own_code_from_the_disk_cache():
    # Two fresh processes: the first may compile (cold cache), the second must load both
    # drivers from numba's disk cache, each from its own entry, and the parallel one must be
    # the prange code (it starts the thread pool; the serial one does not).
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", _CACHE_PROBE], capture_output=True,
                              text=True, check=True)
        out = json.loads(proc.stdout.splitlines()[-1])
    assert out["same"]
    assert out["layer"][0] is None and out["layer"][1] is not None
    serial, parallel = out["stats"]["serial"], out["stats"]["parallel"]
    assert serial[:2] == [1, 0] and parallel[:2] == [1, 0]  # one cache hit, no compilation
    assert serial[2] != parallel[2]


def test_read_only_inputs_reuse_the_compiled_kernels():
    # numba types read-only arrays apart: without a writeable copy every kernel would be
    # compiled a second time (seconds) for a memmapped or locked input
    truth = default_truth(Gate("norga"))
    X, Y = simulate(truth, 300, [0, 1], seed=8, setting="kernel-test")
    starts = np.tile(truth.theta, (2, 1)) + 0.1
    ref = fit_batched(X, Y, starts, truth, backend="numba")
    compiled = len(kernels._serial.signatures)
    Xr, Yr = X.copy(), Y.copy()
    Xr.flags.writeable = Yr.flags.writeable = False
    res = fit_batched(Xr, Yr, starts, truth, backend="numba")
    np.testing.assert_array_equal(res.theta, ref.theta)
    XT = np.swapaxes(Xr, 1, 2)
    lse, mean_out = _pretrained_terms(Xr, truth)
    lse.flags.writeable = mean_out.flags.writeable = False
    kernels.evaluate(XT, Yr, lse, mean_out, np.arange(2), starts, truth, True)
    assert len(kernels._serial.signatures) == compiled
