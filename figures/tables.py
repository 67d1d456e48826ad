"""The papers' result tables filled with our runs, as Markdown and LaTeX.

- Table 1 (NoRGa Table 1, docs/cl-background.md#table-1): FA / CA / FM on Split CIFAR-100 and Split
  ImageNet-R, one row per (backbone, method).
- Table 2 (NoRGa Table 2, docs/cl-background.md#table-2): FA on Split CUB-200 and 5-Datasets with
Sup-21K and
  iBOT-21K, one row per method.
- Table 3 (SMoPE table, docs/cl-background.md#smope-results): FA on ImageNet-R, CIFAR-100 (Sup-1K)
and CUB-200 (Sup-21K
  AugReg), CODA-style protocol, one row per method.

Each table is written twice: in the paper's layout with our mean +/- std (sample std over
seeds, ddof = 1; no +/- for a single seed), and as a long comparison table "ours | paper |
difference" for every cell where the published data file has the same (dataset, backbone,
method[, activation]). Published numbers live in ``figures/data/published.json``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from figures.aggregate import MeanStd, mean_std
from figures.grouping import (
    group_by_setting,
    group_by_variant,
    method_of,
    variant_label,
    variant_sort_key,
)
from figures.names import BACKBONE_LABELS, DATASET_LABELS
from figures.runs import CLRun
from norga.io import atomic_write_text

PUBLISHED_PATH = Path(__file__).parent / "data" / "published.json"
DASH = "–"


@dataclass(frozen=True)
class Column:
    """One numeric column: a metric of a dataset, on a fixed backbone or the row's backbone."""

    dataset: str
    metric: str
    backbone: str | None = None


@dataclass(frozen=True)
class TableSpec:
    """Layout of one paper table."""

    name: str
    title: str
    published_table: str
    columns: tuple[Column, ...]
    backbones: tuple[str, ...] | None = None  # row backbones (Table 1); None: one per column


TABLES: dict[str, TableSpec] = {
    "table1": TableSpec(
        "table1", "Table 1: Split CIFAR-100 and Split ImageNet-R (10 tasks)", "norga_table1",
        tuple(Column(ds, m) for ds in ("cifar100", "imagenet-r") for m in ("FA", "CA", "FM")),
        backbones=("sup21k", "ibot21k", "ibot1k", "dino1k", "moco1k"),
    ),
    "table2": TableSpec(
        "table2", "Table 2: FA on Split CUB-200 (10 tasks) and 5-Datasets (5 tasks)",
        "norga_table2",
        tuple(Column(ds, "FA", bb) for ds in ("cub200", "5datasets")
              for bb in ("sup21k", "ibot21k")),
    ),
    "table3": TableSpec(
        "table3", "Table 3 (SMoPE protocol): FA, 10 tasks", "smope_table",
        (Column("imagenet-r", "FA", "sup1k"), Column("cifar100", "FA", "sup1k"),
         Column("cub200", "FA", "sup21k-augreg")),
    ),
}


@dataclass(frozen=True)
class Cell:
    """One filled cell: our aggregate and the matching published number, if any."""

    ours: MeanStd
    paper: float | None
    paper_std: float | None
    gate_act: str | None

    @property
    def diff(self) -> float | None:
        """Ours minus paper (``None`` without a paper number)."""
        if self.paper is None or self.ours.count == 0:
            return None
        return self.ours.mean - self.paper


# ----------------------------------------------------------------------------- published data


@lru_cache(maxsize=4)
def _load(path: str) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def load_published(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The published-results data file (``figures/data/published.json`` by default)."""
    return _load(str(path or PUBLISHED_PATH))


def published_value(
    published: Mapping[str, Any], table: str, dataset: str, backbone: str, method: str,
    metric: str, activation: str | None = None,
) -> tuple[float, float | None] | None:
    """The published (mean, std) of one setting, or ``None`` when the paper has none.

    For NoRGa with a known ``activation``, the main-table number counts only when the paper
    used that activation; otherwise the activation-ablation number of the same setting is used.
    """
    def match(entry: Mapping[str, Any], tab: str) -> bool:
        return (entry["table"] == tab and entry["dataset"] == dataset
                and entry["backbone"] == backbone and entry["method"] == method
                and metric in entry["metrics"])

    for entry in published["results"]:
        if match(entry, table):
            if method == "norga" and activation and entry.get("activation") not in (
                None, activation
            ):
                break
            mean, std = entry["metrics"][metric]
            return float(mean), None if std is None else float(std)
    if method == "norga" and activation:
        for entry in published["results"]:
            if match(entry, "norga_activation_ablation") and entry.get("activation") == activation:
                mean, std = entry["metrics"][metric]
                return float(mean), None if std is None else float(std)
    return None


# ----------------------------------------------------------------------------- filling


def fill_table(
    spec: TableSpec, runs: Sequence[CLRun], published: Mapping[str, Any] | None = None
) -> dict[tuple[str | None, str], dict[Column, Cell]]:
    """Cells of ``spec`` from our runs: ``{(row backbone, variant): {column: Cell}}``.

    Only rows with at least one of our runs are returned, in the paper's row order.
    """
    published = published if published is not None else load_published()
    by_setting = group_by_setting(runs)
    rows: dict[tuple[str | None, str], dict[Column, Cell]] = {}
    row_backbones: Sequence[str | None] = spec.backbones or (None,)
    for row_bb in row_backbones:
        for col in spec.columns:
            backbone = col.backbone or row_bb
            sruns = by_setting.get((col.dataset, backbone or ""), [])
            for variant, vruns in group_by_variant(sruns).items():
                acts = {r.gate_act for r in vruns}
                act = acts.pop() if len(acts) == 1 else None
                method = method_of(variant)
                pub = published_value(published, spec.published_table, col.dataset,
                                      backbone or "", method, col.metric, act)
                values = [float(r.metrics[col.metric]) for r in vruns if col.metric in r.metrics]
                rows.setdefault((row_bb, variant), {})[col] = Cell(
                    mean_std(values), pub[0] if pub else None, pub[1] if pub else None, act)
    order = {bb: i for i, bb in enumerate(row_backbones)}
    return dict(sorted(rows.items(), key=lambda kv: (order[kv[0][0]],
                                                      variant_sort_key(kv[0][1]))))


# ----------------------------------------------------------------------------- formatting


def format_mean_std(stats: MeanStd, digits: int = 2, pm: str = "±") -> str:
    """``"94.48 ± 0.13"``; just the mean for one seed; a dash without data."""
    if stats.count == 0 or not math.isfinite(stats.mean):
        return DASH
    if stats.count > 1 and math.isfinite(stats.std):
        return f"{stats.mean:.{digits}f} {pm} {stats.std:.{digits}f}"
    return f"{stats.mean:.{digits}f}"


def _fmt(x: float | None, digits: int = 2, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return DASH
    text = f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"
    return text.replace("-", "−")  # typographic minus; LaTeX output turns it into $-$


def _col_header(col: Column) -> str:
    ds = DATASET_LABELS.get(col.dataset, col.dataset).replace("Split ", "")
    bb = f" {BACKBONE_LABELS.get(col.backbone, col.backbone)}" if col.backbone else ""
    return f"{ds}{bb} {col.metric}"


def _row_labels(spec: TableSpec, key: tuple[str | None, str]) -> list[str]:
    bb, variant = key
    labels = [BACKBONE_LABELS.get(bb, bb)] if spec.backbones else []
    return [*labels, variant_label(variant)]


def layout_rows(spec: TableSpec, cells: Mapping[tuple[str | None, str], Mapping[Column, Cell]],
                pm: str = "±") -> tuple[list[str], list[list[str]]]:
    """Header and body of the paper-layout table (strings, ours only)."""
    header = (["PTM"] if spec.backbones else []) + ["Method"]
    header += [_col_header(c) for c in spec.columns]
    body = []
    for key, row in cells.items():
        vals = [format_mean_std(row[c].ours, pm=pm) if c in row else DASH for c in spec.columns]
        body.append(_row_labels(spec, key) + vals)
    return header, body


def comparison_rows(spec: TableSpec, cells: Mapping[tuple[str | None, str], Mapping[Column, Cell]],
                    pm: str = "±") -> tuple[list[str], list[list[str]]]:
    """Header and body of the long comparison table (cells with a published number only)."""
    header = ["Dataset", "PTM", "Method", "Metric", "Seeds", "Ours", "Paper", "Ours − paper"]
    body = []
    for (bb, variant), row in cells.items():
        for col, cell in row.items():
            if cell.paper is None or cell.ours.count == 0:
                continue
            backbone = col.backbone or bb
            paper = _fmt(cell.paper)
            if cell.paper_std is not None:
                paper += f" {pm} {cell.paper_std:.2f}"
            body.append([
                DATASET_LABELS.get(col.dataset, col.dataset),
                BACKBONE_LABELS.get(backbone, backbone or ""), variant_label(variant),
                col.metric, str(cell.ours.count), format_mean_std(cell.ours, pm=pm), paper,
                _fmt(cell.diff, signed=True),
            ])
    return header, body


def to_markdown(header: Sequence[str], body: Sequence[Sequence[str]], n_label_cols: int) -> str:
    """A GitHub-flavoured Markdown table; label columns left-aligned, numbers right-aligned."""
    align = ["---" if i < n_label_cols else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


#: First line of a table made from synthetic example runs.
SYNTHETIC_TABLE_MARK = "SYNTHETIC EXAMPLE DATA (not results)"

_LATEX_ESCAPES = {"&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """Escape LaTeX special characters in plain text (and turn ± / − into math)."""
    out = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)
    return out.replace("±", r"$\pm$").replace("−", "$-$").replace(DASH, "--")


def to_latex(header: Sequence[str], body: Sequence[Sequence[str]], caption: str,
             n_label_cols: int) -> str:
    """A booktabs ``tabular`` inside a ``table`` environment."""
    spec = "l" * n_label_cols + "r" * (len(header) - n_label_cols)
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             rf"\caption{{{latex_escape(caption)}}}", rf"\begin{{tabular}}{{{spec}}}",
             r"\toprule", " & ".join(latex_escape(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(c) for c in row) + r" \\" for row in body]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def write_tables(
    runs: Sequence[CLRun], out_dir: str | os.PathLike[str],
    published: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write every table that has at least one of our runs as ``<name>.md`` and ``<name>.tex``.

    Tables built from synthetic example runs (``config.json`` with ``"synthetic": true``, as
    ``norga-figures --write-example`` writes them) say so in their first line and in every
    LaTeX caption, like the figures' stamp.

    Returns
    -------
    list of Path
        Files written (tables without any matching run are skipped).
    """
    published = published if published is not None else load_published()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    synthetic = any(bool(run.config.get("synthetic")) for run in runs)
    for spec in TABLES.values():
        cells = fill_table(spec, runs, published)
        if not cells:
            continue
        n_labels = 2 if spec.backbones else 1
        source = published["tables"][spec.published_table]["source"]
        lh, lb = layout_rows(spec, cells)
        ch, cb = comparison_rows(spec, cells)
        md = [f"## {spec.title}", "", "Ours: mean ± sample std over seeds (no ± for one seed).",
              "", to_markdown(lh, lb, n_labels), ""]
        tex = [to_latex(lh, lb, f"{spec.title} (ours, mean ± std over seeds)", n_labels)]
        if cb:
            md += ["### Ours vs paper", "", f"Paper: {source}.", "", to_markdown(ch, cb, 4), ""]
            tex += ["", to_latex(ch, cb, f"{spec.title}: ours vs paper", 4)]
        if synthetic:  # example data must never pass for results, in a table as in a figure
            md[:0] = [f"**{SYNTHETIC_TABLE_MARK}**", ""]
            tex[:0] = [f"% {SYNTHETIC_TABLE_MARK}"]
            tex = [t.replace(r"\caption{", rf"\caption{{{SYNTHETIC_TABLE_MARK}: ", 1) for t in tex]
        for suffix, text in ((".md", "\n".join(md)), (".tex", "\n".join(tex) + "\n")):
            path = out_dir / f"{spec.name}{suffix}"
            atomic_write_text(path, text)
            written.append(path)
    return written
