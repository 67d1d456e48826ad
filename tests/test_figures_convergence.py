"""Convergence figures: the plotted numbers are the input numbers, legends show summary slopes."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from figures.convergence import plot_convergence, plot_loss_parts, slope_label
from figures.runs import RunFormatError, read_rates_run
from figures.style import save_figure

N_VALUES = [100, 1000, 10000, 100000]
REPS = 5


def _records(seed: int = 3) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for gate, act, c in (("linear", "none", 30.0), ("norga", "tanh", 9.0)):
        for n in N_VALUES:
            for r in range(REPS):
                loss = c / np.sqrt(n) * rng.lognormal(0, 0.5)
                rows.append({
                    "setting": "exact", "gate": gate, "activation": act, "expert": "affine",
                    "n": n, "replicate": r, "voronoi_loss": loss, "voronoi_loss_r": loss,
                    "loss_mass": loss / 3, "loss_beta1": loss / 4, "loss_eta": loss / 2,
                    "l2_error": 0.2 / np.sqrt(n) * rng.lognormal(0, 0.2), "rss": 1.0,
                    "converged": r != 0, "at_bound": False, "n_iter": 10, "seconds": 0.1,
                })
    return rows


SUMMARY = {
    "linear": {"slope": -0.4871, "slope_ci": [-0.5523, -0.4219], "slope_median": -0.5,
               "slope_median_ci": [-0.6, -0.4], "l2_slope": -0.5012, "l2_slope_ci": [-0.53, -0.47],
               "n_used": [1000, 10000, 100000], "fisher_C": 30.0, "verdict": "power law",
               "n_fits": 20, "n_converged": 16, "n_capped": 4},
    "norga": {"slope": -0.5234, "slope_ci": [-0.5811, -0.4657], "slope_median": -0.52,
              "slope_median_ci": [-0.6, -0.44], "l2_slope": -0.498, "l2_slope_ci": [-0.52, -0.47],
              "n_used": N_VALUES, "fisher_C": 9.0, "verdict": "power law",
              "n_fits": 20, "n_converged": 16, "n_capped": 4},
}


def _by_gid(ax, prefix: str) -> dict:
    artists = [*ax.lines, *ax.collections]
    return {a.get_gid(): a for a in artists if a.get_gid() and a.get_gid().startswith(prefix)}


def _expected(rows, gate, key):
    out = {}
    for n in N_VALUES:
        vals = np.array([r[key] for r in rows if r["gate"] == gate and r["n"] == n])
        out[n] = (np.median(vals), np.quantile(vals, 0.25), np.quantile(vals, 0.75), vals)
    return out


@pytest.fixture(scope="module")
def figure_and_rows():
    rows = _records()
    return plot_convergence(rows, SUMMARY, "exact"), rows


def _expected_mean(rows, gate, key):
    """Mean and 95% t CI of the mean per n, computed with scipy (independent of the figures'
    own t table)."""
    from scipy import stats

    out = {}
    for n in N_VALUES:
        vals = np.array([r[key] for r in rows if r["gate"] == gate and r["n"] == n])
        half = stats.t.ppf(0.975, len(vals) - 1) * vals.std(ddof=1) / np.sqrt(len(vals))
        out[n] = (vals.mean(), max(vals.mean() - half, vals.mean() / 10), vals.mean() + half)
    return out


def test_exact_setting_plots_means_with_ci_and_names_them(figure_and_rows):
    """E1: one statistic in panel (a), the mean (what the legend's slope and the Fisher check
    use), with its 95% t band; the y label says so."""
    fig, rows = figure_and_rows
    for ax, key in zip(fig.axes, ("voronoi_loss", "l2_error"), strict=True):
        assert "mean, 95% CI" in ax.get_ylabel() and not _by_gid(ax, "median:")
        for gate in ("linear", "norga"):
            exp = _expected_mean(rows, gate, key)
            mean = _by_gid(ax, "mean:")[f"mean:{gate}"].get_xydata()
            np.testing.assert_allclose(mean[:, 0], N_VALUES)
            np.testing.assert_allclose(mean[:, 1], [exp[n][0] for n in N_VALUES], rtol=1e-12)
            verts = _by_gid(ax, "ci:")[f"ci:{gate}"].get_paths()[0].vertices
            for n in N_VALUES:
                ys = verts[np.isclose(verts[:, 0], n), 1]
                np.testing.assert_allclose([ys.min(), ys.max()], exp[n][1:], rtol=1e-3)  # 4-digit t


def test_over_setting_plots_medians_and_median_slopes():
    rows = [{**r, "setting": "over"} for r in _records()]
    fig = plot_convergence(rows, SUMMARY, "over")
    ax = fig.axes[0]
    assert "median, IQR" in ax.get_ylabel() and not _by_gid(ax, "mean:")
    label = next(t.get_text() for t in ax.get_legend().get_texts() if t.get_text().startswith(
        "Linear:"))
    e = SUMMARY["linear"]
    assert _numbers(label) == [e["slope_median"], *e["slope_median_ci"]]


def test_reference_rates_are_named_in_their_own_legend(figure_and_rows):
    """No text on the reference lines (bands and points could cover it): a separate legend."""
    fig, _ = figure_and_rows
    ax = fig.axes[0]
    assert not ax.texts
    refs = [a for a in ax.artists + ax.get_children() if a.get_gid() == "legend:references"]
    texts = [t.get_text() for t in refs[0].get_texts()]
    assert texts == ["rate $n^{-1/2}$", "rate $n^{-1/4}$", r"rate $1/\log n$"]


@pytest.mark.slow
def test_median_band_and_points_equal_input():
    rows = _records()
    fig = plot_convergence(rows, SUMMARY, "exact", statistic="median")
    ax = fig.axes[0]
    for gate in ("linear", "norga"):
        exp = _expected(rows, gate, "voronoi_loss")
        median = _by_gid(ax, "median:")[f"median:{gate}"].get_xydata()
        np.testing.assert_allclose(median[:, 0], N_VALUES)
        np.testing.assert_allclose(median[:, 1], [exp[n][0] for n in N_VALUES])
        # fill_between polygon: lower edge (q25) forward, upper edge (q75) backward.
        verts = _by_gid(ax, "iqr:")[f"iqr:{gate}"].get_paths()[0].vertices
        for n in N_VALUES:
            ys = verts[np.isclose(verts[:, 0], n), 1]
            assert np.isclose(ys.min(), exp[n][1]) and np.isclose(ys.max(), exp[n][2])
        pts = _by_gid(ax, "points:")[f"points:{gate}"].get_offsets()
        want = np.array([[r["n"], r["voronoi_loss"]] for r in rows if r["gate"] == gate])
        np.testing.assert_allclose(np.asarray(pts), want)


def test_l2_panel_equals_input():
    rows = _records()
    ax = plot_convergence(rows, SUMMARY, "exact", statistic="median").axes[1]
    for gate in ("linear", "norga"):
        exp = _expected(rows, gate, "l2_error")
        median = _by_gid(ax, "median:")[f"median:{gate}"].get_xydata()
        np.testing.assert_allclose(median[:, 1], [exp[n][0] for n in N_VALUES])


def _numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+\.\d+", text.replace("\u2212", "-"))]


def test_legend_shows_summary_slope_and_ci(figure_and_rows):
    fig, _ = figure_and_rows
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    for gate, name in (("linear", "Linear"), ("norga", "NoRGa (tanh)")):
        label = next(t for t in texts if t.startswith(name + ":"))
        e = SUMMARY[gate]
        assert _numbers(label) == [round(e["slope"], 2), *[round(c, 2) for c in e["slope_ci"]]]
    l2_texts = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    label = next(t for t in l2_texts if t.startswith("Linear:"))
    assert _numbers(label)[0] == round(SUMMARY["linear"]["l2_slope"], 2)


def test_slope_label_without_entry_is_plain_name():
    assert slope_label("Linear", None) == "Linear"
    assert slope_label("Linear", {"slope": None}) == "Linear"


def test_fisher_and_reference_lines(figure_and_rows):
    fig, _ = figure_and_rows
    ax = fig.axes[0]
    for gate in ("linear", "norga"):
        xy = _by_gid(ax, "fisher:")[f"fisher:{gate}"].get_xydata()
        np.testing.assert_allclose(xy[:, 1], SUMMARY[gate]["fisher_C"] / np.sqrt(xy[:, 0]))
    refs = _by_gid(ax, "ref:")
    for name, slope in (("ref:n^-1/2", -0.5), ("ref:n^-1/4", -0.25)):
        xy = refs[name].get_xydata()
        fitted = np.polyfit(np.log(xy[:, 0]), np.log(xy[:, 1]), 1)[0]
        assert fitted == pytest.approx(slope)
    xy = refs["ref:1/log n"].get_xydata()
    np.testing.assert_allclose(xy[:, 1] * np.log(xy[:, 0]), xy[0, 1] * np.log(xy[0, 0]))
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"


def test_excluded_n_are_marked_open(figure_and_rows):
    fig, rows = figure_and_rows
    hollow = _by_gid(fig.axes[0], "excluded:")
    assert set(hollow) == {"excluded:linear"}  # norga used every n
    np.testing.assert_allclose(hollow["excluded:linear"].get_xydata()[:, 0], [100])


def test_converged_only_drops_flagged_fits():
    rows = _records()
    fig = plot_convergence(rows, SUMMARY, "exact", converged_only=True)
    pts = _by_gid(fig.axes[0], "points:")["points:linear"].get_offsets()
    assert len(pts) == sum(r["converged"] for r in rows if r["gate"] == "linear")


def test_loss_parts_medians():
    rows = _records()
    fig = plot_loss_parts(rows, "exact")
    for ax, key in zip(fig.axes, ("loss_mass", "loss_beta1", "loss_eta"), strict=True):
        exp = _expected(rows, "norga", key)
        median = _by_gid(ax, "median:")["median:norga"].get_xydata()
        np.testing.assert_allclose(median[:, 1], [exp[n][0] for n in N_VALUES])


@pytest.mark.slow
def test_save_figure_writes_pdf_and_png(tmp_path, figure_and_rows):
    fig, _ = figure_and_rows
    paths = save_figure(fig, tmp_path / "sub" / "conv")
    assert [p.suffix for p in paths] == [".pdf", ".png"]
    assert paths[0].read_bytes()[:5] == b"%PDF-"
    assert paths[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(p.stat().st_size > 1000 for p in paths)
    assert not list((tmp_path / "sub").glob(".*tmp"))  # no temporary files left behind
    # 300 dpi: the PNG is several times wider than the 6.8 in figure at 100 dpi.
    width = int.from_bytes(paths[1].read_bytes()[16:20], "big")
    assert width > 6.0 * 300 * 0.9


# ----------------------------------------------------------------------------- reading runs


def _write_run(path: Path, rows: list[dict], summary_version=1) -> Path:
    path.mkdir(parents=True)
    with (path / "fits.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (path / "summary.json").write_text(json.dumps(
        {"kind": "rates", "version": summary_version, "settings": {"exact": SUMMARY}}))
    (path / "config.json").write_text(json.dumps({"kind": "rates"}))
    return path


def test_read_rates_run_types(tmp_path):
    rows = _records()
    run = read_rates_run(_write_run(tmp_path / "run", rows))
    rec = run.records[0]
    assert isinstance(rec["n"], int) and isinstance(rec["replicate"], int)
    assert rec["converged"] is False and run.records[1]["converged"] is True
    assert rec["voronoi_loss"] == pytest.approx(rows[0]["voronoi_loss"])
    assert run.settings == ["exact"] and run.summary_for("exact")["norga"]["slope"] == -0.5234
    assert run.mechanism is None


def test_old_or_corrupt_rates_run_gives_one_line(tmp_path):
    old = _write_run(tmp_path / "old", _records(), summary_version=0)
    with pytest.raises(RunFormatError) as err:
        read_rates_run(old)
    assert "version" in str(err.value) and "\n" not in str(err.value)
    bad = _write_run(tmp_path / "bad", _records())
    (bad / "summary.json").write_text("{not json")
    with pytest.raises(RunFormatError, match="summary.json is not valid JSON"):
        read_rates_run(bad)
    missing = _write_run(tmp_path / "missing", _records())
    (missing / "fits.csv").unlink()
    with pytest.raises(RunFormatError, match="missing fits.csv"):
        read_rates_run(missing)


def test_zero_and_non_finite_losses_are_left_off_the_log_axis():
    """An exact fit (loss 0) or a failed one (nan) cannot sit on a log axis: such values are
    dropped from the points, the medians and the IQR; an n with no positive value is skipped."""
    rows = _records()
    for r in rows:
        if r["gate"] == "norga" and r["replicate"] in (1, 2):
            r["voronoi_loss"] = 0.0 if r["replicate"] == 1 else float("nan")
        if r["gate"] == "linear" and r["n"] == N_VALUES[0]:
            r["voronoi_loss"] = 0.0
    ax = plot_convergence(rows, SUMMARY, "exact", statistic="median").axes[0]
    pts = np.asarray(_by_gid(ax, "points:")["points:norga"].get_offsets())
    assert len(pts) == len(N_VALUES) * (REPS - 2) and (pts[:, 1] > 0).all()
    median = _by_gid(ax, "median:")["median:norga"].get_xydata()
    for n, y in median:
        vals = [r["voronoi_loss"] for r in rows if r["gate"] == "norga" and r["n"] == n
                and r["replicate"] not in (1, 2)]
        assert y == pytest.approx(np.median(vals), rel=1e-12)
    linear = _by_gid(ax, "median:")["median:linear"].get_xydata()
    np.testing.assert_allclose(linear[:, 0], N_VALUES[1:])
    assert len(_by_gid(ax, "points:")["points:linear"].get_offsets()) == (len(N_VALUES) - 1) * REPS
    assert ax.get_ylim()[0] > 0


def test_axis_ends_at_data_fisher_distinct_and_prime(figure_and_rows):
    fig, rows = figure_and_rows
    ax = fig.axes[0]
    n_max = max(r["n"] for r in rows)
    lo, hi = ax.get_xlim()
    assert n_max <= hi <= 1.2 * n_max  # no empty decade to the right of the data
    assert min(r["n"] for r in rows) / 1.2 <= lo
    ref = _by_gid(ax, "ref:")["ref:n^-1/2"]
    for fisher in _by_gid(ax, "fisher:").values():  # same slope as the guide: must look apart
        assert (fisher.get_linestyle(), fisher.get_marker(), fisher.get_color()) != (
            ref.get_linestyle(), ref.get_marker(), ref.get_color())
        assert fisher.get_linestyle() != ref.get_linestyle() and fisher.get_marker() != "None"
    title = fig.texts[0].get_text() if fig.texts else fig._suptitle.get_text()
    assert "L\u2032" in title and "L'" not in title and "\\prime" not in title
