"""Regenerate every figure and table found under a results root (used by
``experiments/figures.py``).

Runs are found at any depth (:func:`figures.runs.find_runs`). A run that cannot be read is
reported as one line and skipped; nothing that is missing stops the rest.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.legend import Legend

from figures import accuracy
from figures.convergence import LOSS_PARTS, plot_convergence, plot_loss_parts
from figures.grouping import group_by_setting
from figures.names import safe_slug
from figures.runs import CLRun, RatesRun, RunFormatError, find_runs, read_cl_run, read_rates_run
from figures.selection import plot_task_selection
from figures.style import save_figure
from figures.tables import load_published, write_tables
from norga.io import CHECKSUMS_FILE, atomic_write_text, sha256_hex

logger = logging.getLogger(__name__)

SYNTHETIC_MARK = "SYNTHETIC EXAMPLE DATA (not results)"


@dataclass
class Report:
    """What :func:`render_results` wrote and what it skipped (one line each)."""

    written: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _is_synthetic(*configs: dict) -> bool:
    return any(bool(c.get("synthetic")) for c in configs)


def mark_synthetic(fig: Figure) -> None:
    """Stamp a figure drawn from example data, so that it is never mistaken for a result."""
    fig.text(0.5, 0.5, SYNTHETIC_MARK, ha="center", va="center", fontsize=13, color="red",
             alpha=0.25, rotation=18, zorder=100, gid="synthetic-mark")


class UnsafeOutputPathError(ValueError):
    """A figure's file name would leave its output folder (never written)."""


def _save(fig: Figure, stem: Path, synthetic: bool, out_dir: Path | None = None) -> list[Path]:
    # Names in ``stem`` come from result files and are slugs (:func:`safe_slug`); this check
    # makes sure no figure is written outside ``out_dir`` whatever a future caller passes.
    if out_dir is not None:
        base = out_dir.resolve()
        target = stem.resolve()
        if base not in target.parents:
            raise UnsafeOutputPathError(f"refusing to write {stem}: outside {out_dir}")
    if synthetic:
        mark_synthetic(fig)
    return save_figure(fig, stem)


def _slug(path: Path, root: Path) -> str:
    """File-name part naming the run at ``path`` (its folders below ``root``, made safe)."""
    rel = path.relative_to(root) if path != root else Path(path.name)
    return safe_slug("_".join(rel.parts) or path.name)


#: Errors a malformed value in a run's files can raise while its figures are drawn; the run
#: is then skipped with a one-line note and the others are drawn.
BAD_VALUE_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError, AttributeError,
                    ZeroDivisionError)


def _why(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def rates_figures(run: RatesRun, out_dir: Path, slug: str) -> list[Path]:
    """Convergence (and loss-parts) figures of one rates run."""
    synthetic = _is_synthetic(run.config)
    written: list[Path] = []
    for setting in run.settings:
        rows = run.records_for(setting)
        name = f"{slug}_{safe_slug(setting)}"
        fig = plot_convergence(rows, run.summary_for(setting), setting)
        written += _save(fig, out_dir / f"convergence_{name}", synthetic, out_dir)
        if setting != "exact" and all(k in rows[0] for k in LOSS_PARTS):
            fig = plot_loss_parts(rows, setting)
            written += _save(fig, out_dir / f"loss_parts_{name}", synthetic, out_dir)
    return written


def _run_figures(run: CLRun, root: Path, out_dir: Path) -> list[Path]:
    """The figures of one CL run (matrix, expert frequency, alignment, task selection)."""
    synthetic = _is_synthetic(run.config)
    slug = _slug(run.path, root)
    written: list[Path] = []
    fig = accuracy.plot_accuracy_matrix(run)
    written += _save(fig, out_dir / "matrices" / f"matrix_{slug}", synthetic, out_dir)
    if run.expert_frequency is not None:
        fig = accuracy.plot_expert_frequency(run.expert_frequency)
        written += _save(fig, out_dir / f"expert_frequency_{slug}", synthetic, out_dir)
    if run.accuracy_before_alignment is not None:
        fig = accuracy.plot_accuracy_matrices(
            {"before head alignment": run.accuracy_before_alignment,
             "after head alignment": run.accuracy_matrix},
            title=f"{run.method}, {run.dataset}, {run.backbone}, seed {run.seed}")
        written += _save(fig, out_dir / "matrices" / f"alignment_{slug}", synthetic, out_dir)
    if run.task_selection is not None and run.method in ("norga", "hide", "smope"):
        fig = plot_task_selection(run.task_selection)
        written += _save(fig, out_dir / "selection" / f"selection_{slug}", synthetic, out_dir)
    return written


def cl_figures(runs: Sequence[CLRun], root: Path, out_dir: Path, report: Report) -> None:
    """Accuracy figures, heatmaps, bar charts, expert frequencies, ablation and tables.

    A run whose own figures fail on a malformed value is skipped with a note (and left out of
    the figures over several runs); file names made from run values are :func:`safe_slug`-s.
    """
    good: list[CLRun] = []
    for run in runs:
        try:
            report.written += _run_figures(run, root, out_dir)
        except BAD_VALUE_ERRORS as err:
            report.notes.append(f"skip cl run: {run.path}: a malformed value ({_why(err)})")
            continue
        good.append(run)
    runs = good
    if runs and not any(r.expert_frequency is not None for r in runs):
        report.notes.append("skip expert-frequency figure: no run has expert_frequency.json")

    def guarded(what: str, draw) -> None:  # noqa: ANN001 - a figure over several runs
        try:
            draw()
        except BAD_VALUE_ERRORS as err:
            report.notes.append(f"skip {what}: a malformed value ({_why(err)})")

    for (dataset, backbone), sruns in group_by_setting(runs).items():
        def curves(sruns=sruns, dataset=dataset, backbone=backbone) -> None:
            fig = accuracy.plot_accuracy_curves(sruns)
            report.written.extend(_save(
                fig, out_dir / f"accuracy_{safe_slug(dataset)}_{safe_slug(backbone)}",
                _is_synthetic(*(r.config for r in sruns)), out_dir))
        guarded(f"accuracy figure of {dataset}/{backbone}", curves)
    for dataset in sorted({r.dataset for r in runs}):
        druns = [r for r in runs if r.dataset == dataset]

        def bars(druns=druns, dataset=dataset) -> None:
            fig = accuracy.plot_fa_bars(druns)
            report.written.extend(_save(fig, out_dir / f"fa_bars_{safe_slug(dataset)}",
                                        _is_synthetic(*(r.config for r in druns)), out_dir))
        guarded(f"FA bars of {dataset}", bars)
    ablation = [r for r in runs if r.method == "hide" or (r.method == "norga" and r.gate_act)]
    if any(r.method == "norga" for r in ablation):
        def ablation_figure() -> None:
            published = _ablation_published(load_published())
            fig = accuracy.plot_activation_ablation(ablation, published=published)
            report.written.extend(_save(fig, out_dir / "activation_ablation",
                                        _is_synthetic(*(r.config for r in ablation)), out_dir))
        guarded("activation ablation", ablation_figure)
    elif runs:
        report.notes.append("skip activation ablation: no NoRGa run records gate_act")
    try:
        tables = write_tables(runs, out_dir / "tables")
    except BAD_VALUE_ERRORS as err:
        report.notes.append(f"skip tables: a malformed value ({_why(err)})")
        return
    if runs and not tables:
        report.notes.append("skip tables: no run matches a paper table setting")
    report.written += tables


def _ablation_published(published: dict) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for entry in published["results"]:
        if entry["table"] != "norga_activation_ablation":
            continue
        variant = "hide" if entry["method"] == "hide" else f"norga-{entry['activation']}"
        out[(f"{entry['dataset']}/{entry['backbone']}", variant)] = entry["metrics"]["FA"][0]
    return out


def render_results(root: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Report:
    """Draw every figure and table that the runs under ``root`` allow.

    Parameters
    ----------
    root:
        Results root holding rates and CL run directories at any depth.
    out_dir:
        Folder for the figures (PDF + PNG) and ``tables/`` (Markdown + LaTeX).

    Returns
    -------
    Report
        Files written and one-line notes for everything skipped or unreadable.
    """
    root, out_dir = Path(root), Path(out_dir)
    report = Report()
    found = [r for r in find_runs(root) if out_dir not in (r.path, *r.path.parents)]
    rates_runs: list[tuple[RatesRun, str]] = []
    cl_runs: list[CLRun] = []
    for item in found:
        try:
            if item.kind == "rates":
                rates_runs.append((read_rates_run(item.path), _slug(item.path, root)))
            else:
                cl_runs.append(read_cl_run(item.path))
        except RunFormatError as err:
            report.notes.append(f"skip {item.kind} run: {err}")
            continue
        if not (item.path / CHECKSUMS_FILE).exists():
            report.notes.append(f"unverified {item.kind} run: {item.path} has no "
                                f"{CHECKSUMS_FILE}, so its files cannot be checked (drawn as "
                                "they are; re-running its command rebuilds the checksums)")
    if not rates_runs:
        report.notes.append(f"skip convergence figures: no rates run under {root}")
    for run, slug in rates_runs:
        try:
            report.written += rates_figures(run, out_dir, slug)
        except BAD_VALUE_ERRORS as err:
            report.notes.append(f"skip rates run: {run.path}: a malformed value ({_why(err)})")
    if not cl_runs:
        report.notes.append(f"skip accuracy figures and tables: no CL run under {root}")
    else:
        cl_figures(cl_runs, root, out_dir, report)
    return report


#: README example images: file name -> (figure kind, description).
README_IMAGES = ("convergence", "loss_parts", "accuracy", "matrix", "fa_bars",
                 "activation_ablation", "expert_frequency", "alignment", "selection_norga",
                 "selection_smope")


def write_readme_images(
    root: str | os.PathLike[str], img_dir: str | os.PathLike[str], dpi: int = 160
) -> Report:
    """One PNG of each figure kind for the README and docs, from the runs under ``root``.

    At 160 dpi by default (the house minimum for raster thumbnails is 150; PDFs are vector,
    with 300 dpi for any rasterised part).

    Uses the first readable rates run (setting ``exact`` for the convergence figure, the first
    other setting for the loss parts) and the CL runs found. Figures from synthetic example
    runs are stamped as such.
    """
    root, img_dir = Path(root), Path(img_dir)
    report = Report()
    rates: list[RatesRun] = []
    cl_runs: list[CLRun] = []
    for item in find_runs(root):
        try:
            if item.kind == "rates":
                rates.append(read_rates_run(item.path))
            else:
                cl_runs.append(read_cl_run(item.path))
        except RunFormatError as err:
            report.notes.append(f"skip {item.kind} run: {err}")

    legends: dict[str, dict] = {}

    def save(fig: Figure, name: str, synthetic: bool) -> None:
        if synthetic:
            mark_synthetic(fig)
        paths = save_figure(fig, img_dir / name, formats=("png",), dpi=dpi)
        report.written.extend(paths)
        legends[name] = {"png_sha256": sha256_hex(paths[0].read_bytes()), "dpi": dpi,
                         "synthetic": synthetic, "legends": legend_texts(fig)}

    try:
        if rates:
            run = rates[0]
            settings = run.settings
            first = "exact" if "exact" in settings else settings[0]
            save(plot_convergence(run.records_for(first), run.summary_for(first), first),
                 "convergence", _is_synthetic(run.config))
            others = [s for s in settings if s != "exact"]
            if others and all(k in run.records_for(others[0])[0] for k in LOSS_PARTS):
                save(plot_loss_parts(run.records_for(others[0]), others[0]), "loss_parts",
                     _is_synthetic(run.config))
    except BAD_VALUE_ERRORS as err:
        report.notes.append(f"skip README convergence images: a malformed value ({_why(err)})")
    try:
        if cl_runs:
            synthetic = _is_synthetic(*(r.config for r in cl_runs))
            groups = group_by_setting(cl_runs)
            biggest = max(groups.values(), key=len)
            save(accuracy.plot_accuracy_curves(biggest), "accuracy", synthetic)
            save(accuracy.plot_accuracy_matrix(biggest[0]), "matrix", synthetic)
            dataset = biggest[0].dataset
            save(accuracy.plot_fa_bars([r for r in cl_runs if r.dataset == dataset]), "fa_bars",
                 synthetic)
            ablation = [r for r in cl_runs
                        if r.method == "hide" or (r.method == "norga" and r.gate_act)]
            if any(r.method == "norga" for r in ablation):
                save(accuracy.plot_activation_ablation(
                    ablation, published=_ablation_published(load_published())),
                    "activation_ablation", synthetic)
            with_freq = [r for r in cl_runs if r.expert_frequency is not None]
            if with_freq:
                save(accuracy.plot_expert_frequency(with_freq[0].expert_frequency),
                     "expert_frequency", _is_synthetic(with_freq[0].config))
            aligned = [r for r in cl_runs if r.accuracy_before_alignment is not None
                       and r.method == "norga"]
            if aligned:
                run = aligned[0]
                save(accuracy.plot_accuracy_matrices(
                    {"before head alignment": run.accuracy_before_alignment,
                     "after head alignment": run.accuracy_matrix},
                    title=f"{run.method}, {run.dataset}, seed {run.seed}"), "alignment",
                    _is_synthetic(run.config))
            for method in ("norga", "smope"):
                chosen = [r for r in cl_runs if r.method == method and r.task_selection]
                if chosen:
                    save(plot_task_selection(chosen[0].task_selection), f"selection_{method}",
                         _is_synthetic(chosen[0].config))
    except BAD_VALUE_ERRORS as err:
        report.notes.append(f"skip the remaining README CL images: a malformed value "
                            f"({_why(err)})")
    if legends:
        report.written.append(_update_legend_record(img_dir / LEGEND_RECORD, legends))
    return report


#: The record, next to the images, of what each image's legends say (and which bytes it has).
LEGEND_RECORD = "legends.json"


def legend_texts(fig: Figure) -> list[list[str]]:
    """The texts of every legend of ``fig``, axes by axes (a test compares the numbers with the
    documentation's tables without reading pixels)."""
    out = []
    for ax in fig.axes:
        found = [a for a in ax.get_children() if isinstance(a, Legend)]
        out += [[t.get_text() for t in leg.get_texts()] for leg in found]
    return out


def _update_legend_record(path: Path, entries: dict[str, dict]) -> Path:
    """Merge ``entries`` into the legend record at ``path`` (other images keep theirs)."""
    record = json.loads(path.read_text()) if path.exists() else {}
    record.update(entries)
    atomic_write_text(path, json.dumps(dict(sorted(record.items())), indent=1,
                                       ensure_ascii=False) + "\n")
    return path
