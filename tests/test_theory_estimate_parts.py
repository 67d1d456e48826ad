"""The parts of ``moe_theory.estimate`` around the LM: the normal equations of a batch (chunks,
tiles, replicate subsets, both backends) against a Jacobian built from the model directly, the
backend choice, the near-truth starts, and the scikit-learn estimator's checks and messages."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from moe_theory import estimate
from moe_theory.estimate import (
    ConvergenceWarning,
    LeastSquaresMoE,
    _make_problem,
    _Problem,
    fit_batched,
    near_truth_starts,
    resolve_backend,
)
from moe_theory.gates import Gate
from moe_theory.model import PrefixMoE, regression, regression_and_jacobian
from moe_theory.settings import default_pretrained, default_truth
from moe_theory.simulate import simulate


def two_prompt_truth(gate="norga", expert="affine") -> PrefixMoE:
    return PrefixMoE(default_pretrained(), np.array([0.3, -0.2]), np.array([[2.0], [-1.5]]),
                     np.array([[-2.0], [1.0]]), np.array([1.0, -0.5]), gate=Gate(gate),
                     expert=expert)


def reference_normal_equations(X, Y, theta, structure):
    """``(RSS, J^T J, J^T (Y - g))`` per replicate from the model's own g and Jacobian."""
    out = []
    for Xr, Yr, th in zip(X, Y, theta, strict=True):
        g, J = regression_and_jacobian(Xr, th, structure)
        r = Yr - g
        out.append((r @ r, J.T @ J, J.T @ r))
    return tuple(np.array(x) for x in zip(*out, strict=True))


@pytest.fixture(scope="module")
def batch():
    truth = two_prompt_truth()
    X, Y = simulate(truth, 50, [0, 1, 2], seed=1, setting="test")
    theta = truth.theta + np.random.default_rng(0).normal(0, 0.3, size=(3, truth.theta.size))
    return truth, X, Y, theta


@pytest.mark.parametrize("chunk", [7, 50, 64])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_normal_equations_of_a_batch_match_the_model_jacobian(batch, chunk, backend):
    truth, X, Y, theta = batch
    prob = _Problem(X, Y, truth, chunk, backend)
    want = reference_normal_equations(X, Y, theta, truth)
    rows = np.arange(3)
    rss, jtj, jtr = prob.evaluate(theta, rows, jacobian=True)
    for got, ref in zip((rss, jtj, jtr), want, strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-11, atol=1e-11)
    rss_only, none1, none2 = prob.evaluate(theta, rows, jacobian=False)
    assert none1 is None and none2 is None
    np.testing.assert_allclose(rss_only, want[0], rtol=1e-12)
    # a subset of replicates, in any order, twice (the cached subset copy) and then another
    for sub in ([2, 0], [2, 0], [1], [0, 1, 2]):
        sub = np.array(sub)
        rss, jtj, jtr = prob.evaluate(theta[sub], sub, jacobian=True)
        np.testing.assert_allclose(rss, want[0][sub], rtol=1e-11)
        np.testing.assert_allclose(jtj, want[1][sub], rtol=1e-11, atol=1e-11)
        np.testing.assert_allclose(jtr, want[2][sub], rtol=1e-11, atol=1e-11)


def test_numpy_chunks_split_the_samples_and_cache_one_subset(batch):
    truth, X, Y, _ = batch
    prob = _Problem(X, Y, truth, 20, "numpy")
    assert [c[1].shape for c in prob.all_chunks] == [(3, 20), (3, 20), (3, 10)]
    assert prob.all_chunks[0][0].shape == (3, 1, 20)  # X transposed (R, d, m)
    np.testing.assert_array_equal(prob.all_chunks[2][1], Y[:, 40:])
    assert prob.bytes_per_row == 50 * 8 * 4
    everyone = np.arange(3)
    assert prob.chunks(everyone) is prob.all_chunks
    first = prob.chunks(np.array([0, 2]))
    assert isinstance(first, list) and prob.chunks(np.array([0, 2])) is first
    np.testing.assert_array_equal(first[1][1], Y[[0, 2], 20:40])
    other = prob.chunks(np.array([1]))
    assert other is not first and prob.chunks(np.array([1])) is other


def test_subsets_above_the_cache_size_are_copied_chunk_by_chunk(batch, monkeypatch):
    truth, X, Y, theta = batch
    monkeypatch.setattr(estimate, "_SUBSET_CACHE_BYTES", 2000)  # a row is 1600 bytes
    prob = _Problem(X, Y, truth, 20, "numpy")
    sub = np.array([2, 0])
    lazy = prob.chunks(sub)
    assert not isinstance(lazy, list) and prob._rows is None
    small = prob.chunks(np.array([1]))  # 1600 bytes: cached
    assert isinstance(small, list) and prob._rows.tolist() == [1]
    want = reference_normal_equations(X[sub], Y[sub], theta[sub], truth)
    got = prob.evaluate(theta[sub], sub, jacobian=True)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-11, atol=1e-11)


def test_tiles_of_one_replicate_give_the_same_numbers(monkeypatch):
    """``_TILE_ELEMENTS`` smaller than one replicate's chunk: one replicate per tile, and the
    work buffer is reused from one evaluation to the next."""
    truth = two_prompt_truth("linear", "tanh")
    X, Y = simulate(truth, 40, [0, 1, 2, 3], seed=2, setting="test")
    theta = np.tile(truth.theta, (4, 1)) + 0.1
    monkeypatch.setattr(estimate, "_TILE_ELEMENTS", 100)  # 2 prompts x 40 samples = 80: step 1
    prob = _Problem(X, Y, truth, 64, "numpy")
    want = reference_normal_equations(X, Y, theta, truth)
    for _ in range(2):
        got = prob.evaluate(theta, np.arange(4), jacobian=True)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-11, atol=1e-11)
    assert list(prob._buffers) == [(1, 9, 40)]
    monkeypatch.setattr(estimate, "_TILE_ELEMENTS", 1)  # below one sample: still one per tile
    prob = _Problem(X, Y, truth, 64, "numpy")
    np.testing.assert_allclose(prob.evaluate(theta, np.arange(4), False)[0], want[0], rtol=1e-12)


def test_numba_problem_keeps_transposed_data_and_pretrained_terms(batch):
    truth, X, Y, _ = batch
    prob = _Problem(X, Y, truth, 16, "numba", threads=1)
    assert prob.XT.shape == (3, 1, 50) and prob.XT.flags.c_contiguous and prob.XT.flags.writeable
    np.testing.assert_array_equal(prob.XT[:, 0], X[:, :, 0])
    np.testing.assert_array_equal(prob.Y, Y)
    lse, mean_out = truth.pretrained.collapsed(X)
    np.testing.assert_allclose(prob.lse, lse, rtol=1e-14)
    np.testing.assert_allclose(prob.mean_out, mean_out, rtol=1e-14)


def test_backends_fit_to_the_same_optimum(small):
    truth, X, Y = small
    theta = np.tile(truth.theta, (2, 1)) + 0.2
    ref = fit_batched(X, Y, theta, truth, backend="numpy", chunk=16)
    got = fit_batched(X, Y, theta, truth, backend="numba")
    np.testing.assert_allclose(got.theta, ref.theta, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(got.rss, ref.rss, rtol=1e-10)
    assert ref.converged.all() and got.converged.all()


def test_fit_batched_passes_its_settings_on(batch):
    truth, X, Y, theta = batch
    capped = fit_batched(X, Y, theta, truth, backend="numpy", max_iter=2)
    assert (capped.n_iter == 2).all() and not capped.converged.any()
    loose = fit_batched(X, Y, theta, truth, backend="numpy", ftol=1e-3, xtol=1e-3, gtol=1e-3)
    tight = fit_batched(X, Y, theta, truth, backend="numpy")
    assert (loose.n_iter < tight.n_iter).all()
    boxed = fit_batched(X, Y, theta, truth, backend="numpy", bound=1.2)
    assert np.abs(boxed.theta).max() <= 1.2 and boxed.at_bound.all()
    only_f = fit_batched(X, Y, theta, truth, backend="numpy", ftol=1e-2, xtol=0.0, gtol=0.0)
    only_x = fit_batched(X, Y, theta, truth, backend="numpy", ftol=0.0, xtol=1e-2, gtol=0.0)
    only_g = fit_batched(X, Y, theta, truth, backend="numpy", ftol=0.0, xtol=0.0, gtol=1e-2)
    for res in (only_f, only_x, only_g):
        assert (res.n_iter < tight.n_iter).all()


def test_backend_choice(monkeypatch):
    truth = default_truth(Gate("norga"))
    assert resolve_backend("numpy", truth) == "numpy"
    assert resolve_backend("auto", truth) == "numba"
    assert resolve_backend("numba", truth) == "numba"
    assert estimate.compiled_backend_available()
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("cuda", truth)
    from moe_theory import kernels

    monkeypatch.setattr(kernels, "kernel_supports", lambda s: False)
    assert resolve_backend("auto", truth) == "numpy"
    with pytest.raises(ValueError, match=r"^the numba kernels do not implement gate 'NoRGa "
                                         r"\(tanh\)' with 'affine' experts; use "
                                         r"backend='numpy' or 'auto'$"):
        resolve_backend("numba", truth)
    monkeypatch.setattr(estimate, "_load_kernels", lambda: None)
    assert not estimate.compiled_backend_available()
    assert resolve_backend("auto", truth) == "numpy"
    with pytest.raises(ImportError, match=r"^backend='numba' needs the numba package \(pip "
                                          r"install 'numba>=0.60'\); use backend='numpy' or "
                                          r"'auto' to run without it$"):
        resolve_backend("numba", truth)


def test_load_kernels_without_numba(monkeypatch):
    import builtins
    import sys

    real_import = builtins.__import__

    def no_kernels(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "moe_theory" and fromlist and "kernels" in fromlist:
            raise ImportError("no numba")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.delitem(sys.modules, "moe_theory.kernels", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_kernels)
    assert estimate._load_kernels() is None
    monkeypatch.setattr(builtins, "__import__", real_import)
    assert estimate._load_kernels().__name__ == "moe_theory.kernels"


def test_problem_shapes_and_threads_are_checked(batch):
    truth, X, Y, theta = batch
    with pytest.raises(ValueError, match=r"^shapes disagree: X \(3, 50, 1\), Y \(3, 50\), "
                                         r"theta0 \(2, 8\); expected X \(R, n, d\), "
                                         r"Y \(R, n\), theta0 \(R, P\)$"):
        fit_batched(X, Y, theta[:2], truth)
    # a column of responses (R, n, 1) is refused here, not deep in numpy or numba
    with pytest.raises(ValueError, match=r"^shapes disagree: X \(3, 50, 1\), Y \(3, 50, 1\)"):
        fit_batched(X, Y[..., None], theta, truth)
    with pytest.raises(ValueError, match="shapes disagree"):
        fit_batched(X, Y[:, :40], theta, truth)
    with pytest.raises(ValueError, match="shapes disagree"):
        fit_batched(X, Y[:2], theta, truth)
    with pytest.raises(ValueError, match="shapes disagree"):
        _make_problem(X, Y, (3,), truth, 10, "numpy", 1)
    with pytest.raises(ValueError, match="^threads must be >= 1; got 0$"):
        fit_batched(X, Y, theta, truth, threads=0)
    prob = _make_problem(X.tolist(), Y.tolist(), theta.shape, truth, 10, "auto", 3)
    assert (prob.backend, prob.threads, prob.R) == ("numba", 3, 3)


# ---------------------------------------------------------------------------------------------
# near-truth starts


def test_near_truth_starts_give_each_true_atom_a_fitted_one_first():
    truth = two_prompt_truth()
    atoms = truth.theta.reshape(2, 4)
    starts = near_truth_starts(truth, 2, 3, np.random.default_rng(0), scale=0.0)
    np.testing.assert_array_equal(starts, np.tile(truth.theta, (3, 1)))
    over = near_truth_starts(truth, 5, 40, np.random.default_rng(1), scale=0.0).reshape(40, 5, 4)
    np.testing.assert_array_equal(over[:, :2, 1:], np.broadcast_to(atoms[:, 1:], (40, 2, 3)))
    owners = []
    for s in over:
        owner = [int(np.flatnonzero((atoms[:, 1:] == a[1:]).all(axis=1))[0]) for a in s]
        owners.append(owner)
        counts = np.bincount(owner, minlength=2)
        np.testing.assert_allclose(s[:, 0], atoms[owner, 0] - np.log(counts[owner]), rtol=1e-14)
        for j in range(2):  # the masses of each cell add up to the true mass
            assert np.exp(s[np.array(owner) == j, 0]).sum() == pytest.approx(np.exp(atoms[j, 0]))
    assert {o[-1] for o in owners} == {0, 1}  # the extra atoms go to random true atoms


def test_near_truth_starts_are_the_owner_draws_then_the_noise_draws():
    truth = two_prompt_truth()
    atoms = truth.theta.reshape(2, 4)
    got = near_truth_starts(truth, 3, 2, np.random.default_rng(6), scale=0.3)
    rng = np.random.default_rng(6)
    for start in got:
        owner = np.concatenate([[0, 1], rng.integers(0, 2, size=1)])
        counts = np.bincount(owner)
        want = atoms[owner].copy()
        want[:, 0] -= np.log(counts[owner])
        want = want + rng.normal(0.0, 0.3, size=(3, 4))
        np.testing.assert_array_equal(start, want.reshape(-1))
    default = near_truth_starts(truth, 2, 1, np.random.default_rng(6))
    rng = np.random.default_rng(6)
    rng.integers(0, 2, size=0)
    np.testing.assert_allclose(default[0], truth.theta + rng.normal(0.0, 0.1, size=8),
                               rtol=1e-15)


def test_near_truth_start_noise_has_the_given_scale_and_bound():
    truth = two_prompt_truth()
    starts = near_truth_starts(truth, 2, 4000, np.random.default_rng(2), scale=0.5)
    noise = starts - truth.theta
    assert noise.std() == pytest.approx(0.5, rel=0.02) and abs(noise.mean()) < 0.01
    boxed = near_truth_starts(truth, 2, 400, np.random.default_rng(2), scale=0.5, bound=1.0)
    assert boxed.max() == 1.0 and boxed.min() == -1.0
    np.testing.assert_array_equal(boxed, np.clip(starts[:400], -1.0, 1.0))
    assert near_truth_starts(truth, 2, 1, np.random.default_rng(2)).std() > 0
    with pytest.raises(ValueError, match=r"^n_fitted=1 must be >= the number of true prompts L=2$"):
        near_truth_starts(truth, 1, 1, np.random.default_rng(0))


# ---------------------------------------------------------------------------------------------
# the estimator


@pytest.fixture(scope="module")
def small():
    truth = default_truth(Gate("norga"))
    X, Y = simulate(truth, 200, [0, 1], seed=4, setting="test")
    return truth, X, Y


def test_estimator_defaults():
    assert LeastSquaresMoE().get_params() == {
        "gate": "norga", "activation": "tanh", "expert": "affine", "n_experts": 1,
        "pretrained": None, "init": "near-truth", "truth": None, "n_init": 1, "max_iter": 400,
        "tol": 1e-12, "bound": None, "alpha": 1.0, "tau": 1.0, "init_scale": 0.1,
        "random_state": None, "backend": "auto", "threads": 1, "solver": "auto",
    }


def test_estimator_single_data_set_inputs(small):
    truth, X, Y = small
    est = LeastSquaresMoE(truth=truth, backend="numpy", random_state=0)
    est.fit(X[0].tolist(), Y[0].tolist())  # a 2-D nested list is one data set
    assert est.theta_.shape == (4,) and est.n_features_in_ == 1
    with pytest.raises(ValueError, match="X has 2 features"):
        est.predict(np.zeros((5, 2)))
    assert est.n_features_in_ == 1
    one = LeastSquaresMoE(truth=truth, backend="numpy", random_state=0, max_iter=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        one.fit(X[:, :1], Y[:, :1])  # a batch of one sample per data set is allowed
    assert one.theta_.shape == (2, 4)


def test_estimator_structure_comes_from_pretrained_or_truth(small):
    truth, X, Y = small
    a = LeastSquaresMoE("norga", truth=truth, random_state=0, backend="numpy").fit(X, Y)
    b = LeastSquaresMoE("norga", truth=truth, pretrained=truth.pretrained, random_state=0,
                        backend="numpy").fit(X, Y)
    np.testing.assert_array_equal(a.theta_, b.theta_)
    s = LeastSquaresMoE("linear", "sigmoid", expert="tanh", n_experts=3, alpha=0.5, tau=2.0,
                        pretrained=truth.pretrained)._structure(1)
    assert s.gate == Gate("linear", "sigmoid", 0.5, 2.0) and s.expert == "tanh"
    assert s.n_prompts == 3 and s.theta.shape == (12,) and not s.theta.any()
    assert s.pretrained is truth.pretrained
    with pytest.raises(ValueError, match=r"^pass pretrained= \(or truth=\) so the known experts "
                                         r"are defined$"):
        LeastSquaresMoE()._structure(1)
    with pytest.raises(ValueError, match="^X has dimension 2 but the pretrained experts have 1$"):
        LeastSquaresMoE(truth=truth)._structure(2)


def test_estimator_start_arrays_and_their_checks(small):
    truth, X, Y = small
    rng = np.random.default_rng(3)
    starts = near_truth_starts(truth, 1, 2, rng)
    est = LeastSquaresMoE("norga", truth=truth, n_init=2, init=starts, backend="numpy")
    est.fit(X, Y)
    want = estimate.fit_restarts(X, Y, np.broadcast_to(starts, (2, 2, 4)), est._structure(1),
                                 backend="numpy")
    np.testing.assert_array_equal(est.theta_, want.theta)
    per_rep = np.stack([starts, starts[::-1]])
    assert est.set_params(init=per_rep)._starts(2, 4) is not None
    np.testing.assert_array_equal(est._starts(2, 4), per_rep)
    with pytest.raises(ValueError, match=r"^init array must have shape \(n_init, P\) or "
                                         r"\(R, n_init, P\) = \(2, 2, 4\); got \(2, 3, 4\)$"):
        LeastSquaresMoE(truth=truth, n_init=2, init=np.zeros((2, 3, 4)))._starts(2, 4)
    with pytest.raises(ValueError, match="^init must be 'near-truth' or an array; got 'random'$"):
        LeastSquaresMoE(truth=truth, init="random")._starts(1, 4)
    with pytest.raises(ValueError, match=r"^init='near-truth' needs truth=$"):
        LeastSquaresMoE(pretrained=truth.pretrained)._starts(1, 4)


def test_near_truth_estimator_starts_are_seeded_per_replicate(small):
    truth, _, _ = small
    est = LeastSquaresMoE(truth=truth, n_init=3, random_state=5, init_scale=0.2, bound=0.5)
    got = est._starts(2, 4)
    rng = np.random.default_rng(5)
    want = [near_truth_starts(truth, 1, 3, rng, 0.2, 0.5) for _ in range(2)]
    np.testing.assert_array_equal(got, np.stack(want))
    assert not np.array_equal(got[0], got[1])


def test_batched_and_single_fits_agree_and_are_squeezed(small):
    truth, X, Y = small
    kw = {"truth": truth, "random_state": 1, "n_init": 2, "backend": "numpy", "bound": 3.0}
    batched = LeastSquaresMoE("norga", **kw).fit(X[:1], Y[:1])
    single = LeastSquaresMoE("norga", **kw).fit(X[0], Y[0])
    assert batched.theta_.shape == (1, 4) and single.theta_.shape == (4,)
    np.testing.assert_array_equal(batched.theta_[0], single.theta_)
    for name in ("loss_", "n_iter_", "converged_", "at_bound_", "status_"):
        assert np.shape(getattr(single, name)) == ()
        assert getattr(batched, name).shape == (1,)
        assert getattr(batched, name)[0] == getattr(single, name)
    assert single.status_ == "converged" and single.n_iter_ > 2 and not single.at_bound_
    np.testing.assert_array_equal(single.params_.theta, single.theta_)
    np.testing.assert_allclose(single.predict(X[0]), regression(X[0], single.params_))
    both = LeastSquaresMoE("norga", **kw).fit(X, Y)
    assert both.params_.theta.shape == (2, 4)
    pred = both.predict(X)
    np.testing.assert_allclose(pred[1], regression(X[1], truth.with_theta(both.theta_[1])))
    assert single.score(X[0], Y[0]) > 0.9


def test_capped_and_stalled_counts_in_the_warning(small, monkeypatch):
    truth, X, Y = small
    fake = estimate.FitResult(theta=np.zeros((2, 4)), rss=np.ones(2), n_iter=np.ones(2, int),
                              converged=np.array([False, False]), at_bound=np.zeros(2, bool),
                              stalled=np.array([True, False]))
    monkeypatch.setattr(estimate, "fit_restarts", lambda *a, **k: fake)
    est = LeastSquaresMoE(truth=truth, max_iter=7, random_state=0)
    with pytest.warns(ConvergenceWarning) as rec:
        est.fit(X, Y)
    assert str(rec[0].message) == (
        "1 of 2 fits reached max_iter=7 and 1 stalled (damping blew up) without converging; "
        "they are kept and flagged converged_=False (status_)")
    assert est.status_.tolist() == ["stalled", "capped"]


def test_estimator_passes_its_settings_to_the_restarts(small, monkeypatch):
    truth, X, Y = small
    seen = {}
    real = estimate.fit_restarts

    def spy(*args, **kw):
        seen.update(kw)
        return real(*args, **kw)

    monkeypatch.setattr(estimate, "fit_restarts", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        LeastSquaresMoE(truth=truth, bound=4.0, max_iter=9, tol=1e-6, backend="numpy", threads=2,
                        random_state=0, solver="varpro").fit(X, Y)
    assert seen == {"bound": 4.0, "max_iter": 9, "tol": 1e-6, "backend": "numpy", "threads": 2,
                    "solver": "varpro"}


def test_estimator_input_checks(small):
    truth, X, Y = small
    est = LeastSquaresMoE(truth=truth, backend="numpy", random_state=0)
    with pytest.raises(ValueError, match="^LeastSquaresMoE requires y to be passed, but the target "
                                         "y is None$"):
        est.fit(X, None)
    with pytest.raises(ValueError, match=r"^a batch X \(2, 200, 1\) needs y of shape \(2, 200\); "
                                         r"got \(2, 199\)$"):
        est.fit(X, Y[:, 1:])
    bad_y = Y.copy()
    bad_y[0, 3] = np.nan
    with pytest.raises(ValueError, match="^y contains NaN or infinity$"):
        est.fit(X, bad_y)
    bad_x = X.copy()
    bad_x[1, 0, 0] = np.inf
    with pytest.raises(ValueError, match="^X contains NaN or infinity$"):
        est.fit(bad_x, Y)
    with pytest.raises(ValueError, match=r"^X has no samples: shape \(2, 0, 1\)$"):
        est.fit(np.zeros((2, 0, 1)), np.zeros((2, 0)))
    est.fit(X.tolist(), Y.tolist())  # a nested list batch
    assert est.n_features_in_ == 1 and est.theta_.shape == (2, 4)
    with pytest.raises(ValueError, match="^X has 2 features, but LeastSquaresMoE is expecting 1 "
                                         "features as input$"):
        est.predict(np.zeros((2, 5, 2)))
    with pytest.raises(ValueError, match="^X contains NaN or infinity$"):
        est.predict(bad_x)
    est2 = LeastSquaresMoE(truth=truth, backend="numpy")
    with pytest.raises(ValueError):
        est2.fit(X[0], None)


def test_uneven_tiles_and_the_residual_row_of_the_work_buffer(monkeypatch):
    """Three replicates in tiles of two (the last tile is short), and the work buffer's last
    row holds the residual ``Y - g`` of the tile just evaluated."""
    truth = two_prompt_truth("linear", "tanh")
    X, Y = simulate(truth, 40, [0, 1, 2], seed=2, setting="test")
    theta = np.tile(truth.theta, (3, 1)) + np.array([[0.1], [0.2], [-0.1]])
    monkeypatch.setattr(estimate, "_TILE_ELEMENTS", 160)  # 2 prompts x 40 samples: step 2
    prob = _Problem(X, Y, truth, 64, "numpy")
    want = reference_normal_equations(X, Y, theta, truth)
    got = prob.evaluate(theta, np.arange(3), jacobian=True)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-11, atol=1e-11)
    buf = prob._buffers[(2, 9, 40)]
    g_last = regression_and_jacobian(X[2], theta[2], truth)[0]
    np.testing.assert_allclose(buf[0, 8], Y[2] - g_last, rtol=1e-12, atol=1e-14)
